"""Learning-rate schedule: linear warm-up, then cosine (or linear / constant) decay."""

from __future__ import annotations

import math
from dataclasses import dataclass


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


def lr_scheduler_factory(warmup: int, total: int, kind: str, min_ratio: float):
    """A callable DeepSpeed accepts as `lr_scheduler`: optimizer -> scheduler."""
    import torch

    fn = WarmupDecay(warmup, total, kind, min_ratio)

    def make(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)

    return make
