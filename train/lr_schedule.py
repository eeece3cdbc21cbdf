"""Learning-rate schedule: linear warm-up, then cosine (or linear / constant) decay."""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim.lr_scheduler import LambdaLR


@dataclass(frozen=True)
class WarmupDecay:
    """Multiplier of the base LR at optimizer step `step` (0-based), for `LambdaLR`.

    Warm-up: (step + 1) / warmup for step < warmup. Then from 1 at `warmup` to `min_ratio`
    at the last step `total - 1`, by `kind` (cosine | linear | constant).
    """

    warmup: int
    total: int
    kind: str = "cosine"
    min_ratio: float = 0.1

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        span = max(self.total - 1 - self.warmup, 1)
        progress = min(max((step - self.warmup) / span, 0.0), 1.0)
        if self.kind == "linear":
            decay = 1.0 - progress
        else:
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_ratio + (1.0 - self.min_ratio) * decay


class ConfigSchedule(LambdaLR):
    """A LambdaLR whose schedule is always the run's config: a checkpoint restores its
    position (the step) only, not the schedule nor the base LR it was saved with.

    The policy for a run extended on resume (`train.resume=<run> train.max_steps=<more>`):
    the LR at step k is what a fresh run of the new length has at step k (warm-up and
    decay over the new `train.max_steps`), as the sparsity schedule is (train/sparsity.py
    does not restore its schedule either). LambdaLR itself would restore the saved
    WarmupDecay's fields, i.e. the old length, and leave the LR at its floor."""

    def load_state_dict(self, state_dict: dict) -> None:
        skip = ("lr_lambdas", "base_lrs", "_last_lr")
        self.__dict__.update({k: v for k, v in state_dict.items() if k not in skip})
        lrs = [base * fn(self.last_epoch) for fn, base in zip(self.lr_lambdas, self.base_lrs)]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr  # the optimizer's state came back with the saved LR
        self._last_lr = lrs


def lr_scheduler_factory(warmup: int, total: int, kind: str, min_ratio: float):
    """A callable DeepSpeed accepts as `lr_scheduler`: optimizer -> scheduler."""
    fn = WarmupDecay(warmup, total, kind, min_ratio)

    def make(optimizer):
        return ConfigSchedule(optimizer, fn)

    return make
