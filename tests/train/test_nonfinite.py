"""A non-finite loss aborts with the step number, or (train.on_nonfinite=skip) the optimizer
step is skipped and training goes on."""

from __future__ import annotations

import pytest
import torch
from train_helpers import read_metrics, run_in_process

from train.trainer import NonFiniteError


def _nan_at_step(index: int, snapshots: list):
    """Patch: the LM loss of optimizer step `index` (0-based) is NaN; record the router
    weight of layer 0 after every step."""

    def hook(trainer):
        forward, step_fn = trainer._micro_batch_loss, trainer.train_step

        def micro(batch, dense):
            loss, probs, routes = forward(batch, dense)
            return (loss * float("nan") if trainer.step == index else loss), probs, routes

        def step(batches):
            metrics = step_fn(batches)
            w = trainer.module.lm.model.layers[0].self_attn.router.weight
            snapshots.append((w.detach().clone(), trainer.engine.skipped_steps))
            return metrics

        trainer._micro_batch_loss, trainer.train_step = micro, step

    return hook


def test_abort_names_the_step(base_overrides, tmp_path):
    with pytest.raises(NonFiniteError, match=r"^step 2: non-finite loss"):
        run_in_process(base_overrides + ["train.max_steps=3"], tmp_path, _nan_at_step(1, []))


def test_skip_leaves_parameters_and_goes_on(base_overrides, tmp_path):
    snaps: list = []
    overrides = base_overrides + ["train.max_steps=4", "train.on_nonfinite=skip",
                                  "deepspeed=zero2"]
    code, trainer = run_in_process(overrides, tmp_path, _nan_at_step(1, snaps))
    assert code == 0 and trainer.step == 4
    rows = read_metrics(tmp_path)
    assert rows[1].get("skipped") is True
    assert not any(r.get("skipped") for r in rows[:1] + rows[2:])
    weights, skipped = zip(*snaps)
    assert torch.equal(weights[0], weights[1])  # the skipped step changed nothing
    assert not torch.equal(weights[1], weights[2])
    assert skipped == (0, 1, 1, 1)


def test_skip_with_zero3_is_refused(base_overrides, tmp_path):
    from train.config import ConfigError

    with pytest.raises(ConfigError, match="train.on_nonfinite: skip needs deepspeed.stage <= 2"):
        run_in_process(base_overrides + ["train.on_nonfinite=skip", "deepspeed=zero3"], tmp_path)
