"""Resume with a different number of ranks: a run killed after step 3 (checkpoint at step
2) continues on another number of processes through DeepSpeed's universal checkpoint, and
its steps 3-4 match an uninterrupted one-process run with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from train_helpers import ROOT, read_metrics, run_in_process


def _torchrun(nproc: int, run_dir, overrides: list[str], fault: str | None = None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                        "MASTER_PORT", "L2A_FAULT")}
    env = {**env, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if fault:
        env["L2A_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
         str(ROOT / "tests" / "train" / "fit_worker.py"), str(run_dir), *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.slow
@pytest.mark.parametrize("saved,resumed,stage", [(2, 1, 2), (1, 2, 3)])
def test_resume_on_another_number_of_ranks(saved, resumed, stage, base_overrides, tmp_path):
    overrides = base_overrides + [
        "train.max_steps=4", "train.micro_batch_size=2", "train.global_batch_size=4",
        f"deepspeed=zero{stage}",
    ]
    code, _ = run_in_process(overrides + ["train.ckpt_every=0"], tmp_path / "reference")
    assert code == 0
    reference = {r["step"]: r for r in read_metrics(tmp_path / "reference")}

    run = tmp_path / "elastic"
    first = _torchrun(saved, run, overrides + ["train.ckpt_every=2"], fault="kill_after_step:3")
    assert first.returncode != 0, "the first run should have been killed after step 3"
    assert (run / "checkpoints" / "step_00000002" / "complete").is_file(), first.stderr[-3000:]
    assert not (run / "checkpoints" / "step_00000004").exists()

    second = _torchrun(resumed, run, overrides + ["train.ckpt_every=0", "train.resume=auto"])
    assert second.returncode == 0, second.stderr[-4000:]
    assert (run / "checkpoints" / "step_00000002" / "ds_universal").is_dir()
    rows = read_metrics(run)
    assert [r["step"] for r in rows][-2:] == [3, 4]
    for got in rows[-2:]:
        want = reference[got["step"]]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5), got["step"]
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-3), got["step"]
        assert got["sparsity"] == pytest.approx(want["sparsity"], abs=0.02), got["step"]
