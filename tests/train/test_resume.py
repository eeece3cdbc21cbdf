"""Exact resume on CPU: a run killed with SIGKILL (also in the middle of a checkpoint save)
or preempted with SIGUSR1, then resumed, reproduces the uninterrupted run's per-step
metrics exactly."""

from __future__ import annotations

import os
import signal

import pytest
from train_helpers import read_metrics, run_cli, run_in_process

EXACT = ("loss", "lm_loss", "sparsity", "sparsity/layer_0", "sparsity/layer_1", "grad_norm",
         "lr", "reg", "dense")


@pytest.fixture(scope="module")
def overrides(base_overrides):
    return base_overrides + ["train.ckpt_every=2", "train.max_steps=6"]


@pytest.fixture(scope="module")
def reference(overrides, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference")
    proc = run_cli(overrides, run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(run_dir)
    assert len(rows) == 6
    return rows


def _assert_same(rows, reference):
    assert [r["step"] for r in rows] == [r["step"] for r in reference]
    for got, want in zip(rows, reference):
        for key in EXACT:
            assert got[key] == want[key], (got["step"], key, got[key], want[key])


@pytest.mark.slow
def test_sigkill_mid_save_and_between_saves_then_resume_is_exact(overrides, reference, tmp_path):
    run_dir = tmp_path / "run"
    # Killed while writing the step-4 checkpoint: step 2 stays the latest usable one.
    first = run_cli(overrides, run_dir, env={"L2A_FAULT": "kill_in_save:4"})
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    ckpts = run_dir / "checkpoints"
    assert (ckpts / "step_00000002" / "complete").is_file()
    assert (ckpts / ".tmp-step_00000004").is_dir()
    assert not (ckpts / ".tmp-step_00000004" / "complete").exists()
    assert not (ckpts / "step_00000004").exists()
    # Resumed from step 2, killed again after step 5 (between saves).
    second = run_cli(overrides, run_dir, env={"L2A_FAULT": "kill_after_step:5"})
    assert second.returncode == -signal.SIGKILL, second.stderr[-3000:]
    assert "resumed from" in second.stderr and "step_00000002" in second.stderr
    assert not (ckpts / ".tmp-step_00000004").exists()
    assert (ckpts / "step_00000004" / "complete").is_file()
    # Resumed from step 4 to the end.
    third = run_cli(overrides, run_dir)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "step_00000004" in third.stderr
    _assert_same(read_metrics(run_dir), reference)


def test_preemption_signal_saves_exits_75_and_resumes_exactly(overrides, reference, tmp_path):
    run_dir = tmp_path / "run"

    def signal_after_step_3(trainer):
        original = trainer.train_step

        def step(batches):
            metrics = original(batches)
            if trainer.step == 3:
                os.kill(os.getpid(), signal.SIGUSR1)  # as Slurm does before a preemption
            return metrics

        trainer.train_step = step

    code, _ = run_in_process(overrides, run_dir, signal_after_step_3)
    assert code == 75
    assert (run_dir / "checkpoints" / "step_00000003" / "complete").is_file()
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3]
    code, trainer = run_in_process(overrides, run_dir)
    assert code == 0 and trainer.step == 6
    _assert_same(read_metrics(run_dir), reference)


def test_explicit_bad_checkpoint_fails_fast_with_one_line(overrides, tmp_path, capsys):
    from train_helpers import compose_run

    from train.trainer import run

    bad = tmp_path / "checkpoints" / "step_00000009"
    bad.mkdir(parents=True)  # no marker: an interrupted save
    code = run(compose_run(overrides + [f"train.resume={bad}"]), tmp_path, [])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2  # a checkpoint error (docs/DESIGN.md)
    assert err[-1] == f"error: train.resume: {bad}: incomplete checkpoint (no 'complete' marker: the save was interrupted)"
