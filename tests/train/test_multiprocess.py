"""torchrun, 2 processes on gloo, ZeRO 1, 2 and 3: the same global batch gives the same
per-step losses, gradient norms and sparsity as one process with gradient accumulation, and
a 2-rank ZeRO-3 checkpoint exports to the same weights. ZeRO-3 runs with the weights loaded
partitioned (deepspeed.zero3_init, the default) and fully on every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from train_helpers import ROOT, read_metrics, run_in_process


@pytest.mark.slow
def test_two_process_zero_stages_match_one_process(base_overrides, tmp_path):
    from train.checkpoint import latest_complete
    from train.export import _consolidated_state_dict

    overrides = base_overrides + [
        "train.max_steps=3", "train.micro_batch_size=2", "train.global_batch_size=4",
        "train.ckpt_every=0", "train.save_final=true",
    ]
    code, trainer = run_in_process(overrides + ["deepspeed=zero1"], tmp_path / "single")
    assert code == 0 and trainer.grad_accum == 2
    reference = read_metrics(tmp_path / "single")

    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                        "MASTER_PORT")}
    env = {**env, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "tests" / "train" / "parity_worker.py"), str(tmp_path / "multi"), *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for stage in (1, 2, 3, "3_full_load"):
        loading = json.loads((tmp_path / "multi" / f"zero{stage}" / "loading.json").read_text())
        assert loading["loaded_partitioned"] == (stage == 3), stage
        rows = read_metrics(tmp_path / "multi" / f"zero{stage}")
        assert [r["step"] for r in rows] == [1, 2, 3]
        for got, want in zip(rows, reference):
            assert got["lm_loss"] == pytest.approx(want["lm_loss"], rel=1e-5, abs=1e-6), stage
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6), stage
            assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-3), stage
            assert got["sparsity"] == pytest.approx(want["sparsity"], abs=0.02), stage
            assert got["dense"] == want["dense"]
    single = _consolidated_state_dict(latest_complete(tmp_path / "single"))
    zero3 = _consolidated_state_dict(latest_complete(tmp_path / "multi" / "zero3"))
    assert single.keys() == zero3.keys()
    for name, tensor in single.items():
        torch.testing.assert_close(zero3[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
