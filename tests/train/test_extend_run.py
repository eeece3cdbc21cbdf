"""Extending a run (`train.resume=<run> train.max_steps=<more>`), end to end through
`python -m train`. The policy: the schedules follow the new config, so the LR and the
router-regulariser weight at step k after the resume are those of a fresh run of the new
length at step k (the LR used to keep the old length from the checkpoint and sit at its
floor while the sparsity schedule followed the new one)."""

from __future__ import annotations

from train_helpers import read_metrics, run_cli


def test_extended_run_follows_the_schedules_of_a_fresh_run_of_its_length(base_overrides,
                                                                          tmp_path):
    common = base_overrides + ["train.ckpt_every=0", "train.save_final=true"]
    short = run_cli(common + ["train.max_steps=3"], tmp_path / "run")
    assert short.returncode == 0, short.stderr[-3000:]
    extended = run_cli(common + ["train.max_steps=6"], tmp_path / "run")  # resume=auto
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert "resumed from" in extended.stderr and "step_00000003" in extended.stderr
    fresh = run_cli(common + ["train.max_steps=6"], tmp_path / "fresh")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    got, want = read_metrics(tmp_path / "run"), read_metrics(tmp_path / "fresh")
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2, 3, 4, 5, 6]
    for g, w in zip(got[3:], want[3:]):
        assert g["lr"] == w["lr"], (g["step"], g["lr"], w["lr"])
        assert g["lambda"] == w["lambda"], (g["step"], g["lambda"], w["lambda"])
    # Not trivially equal: the short run decayed to its floor by its last step.
    assert got[2]["lr"] < want[2]["lr"]
