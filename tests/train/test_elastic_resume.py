"""Resume with a different number of ranks: a 2-rank ZeRO-2 run killed after step 3
(checkpoint at step 2) continues in one process through DeepSpeed's universal checkpoint,
and its steps 3-4 match an uninterrupted one-process run with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from train_helpers import ROOT, read_metrics, run_in_process


@pytest.mark.slow
def test_two_ranks_to_one_resumes_through_universal_checkpoint(base_overrides, tmp_path):
    overrides = base_overrides + [
        "train.max_steps=4", "train.micro_batch_size=2", "train.global_batch_size=4",
        "deepspeed=zero2",
    ]
    code, _ = run_in_process(overrides + ["train.ckpt_every=0"], tmp_path / "reference")
    assert code == 0
    reference = {r["step"]: r for r in read_metrics(tmp_path / "reference")}

    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                        "MASTER_PORT")}
    env = {**env, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
           "L2A_FAULT": "kill_after_step:3",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    run = tmp_path / "elastic"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "tests" / "train" / "fit_worker.py"), str(run), *overrides,
         "train.ckpt_every=2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode != 0, "the 2-rank run should have been killed after step 3"
    assert (run / "checkpoints" / "step_00000002" / "complete").is_file(), proc.stderr[-3000:]

    code, trainer = run_in_process(overrides + ["train.ckpt_every=0", "train.resume=auto"], run)
    assert code == 0 and trainer.resume_universal and trainer.dist.world_size == 1
    assert (run / "checkpoints" / "step_00000002" / "ds_universal").is_dir()
    resumed = {r["step"]: r for r in read_metrics(run)}
    for step in (3, 4):
        got, want = resumed[step], reference[step]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5), step
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-3), step
        assert got["sparsity"] == pytest.approx(want["sparsity"], abs=0.02), step
