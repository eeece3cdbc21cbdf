"""`python -m train` failing as a user meets it: one line, exit code 2, no empty run
directory; a sweep with invalid points runs the valid ones and lists the failed ones."""

from __future__ import annotations

import json

import pytest
from train_helpers import run_cli


def _error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith(("error", "  job #"))]


def test_bad_resume_path_is_one_line_exit_2_and_leaves_no_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(["experiment=tiny", f"train.resume={tmp_path / 'nope'}"], run_dir)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert _error_lines(proc.stderr) == [
        f"error: train.resume: {tmp_path / 'nope'}: checkpoint not found"]
    assert not run_dir.exists()


@pytest.mark.timeout(1800)  # a training job in its own process: slow on a loaded machine
def test_sweep_runs_the_valid_jobs_and_lists_the_failed_ones(base_overrides, tmp_path):
    """Hydra's in-process launcher: the invalid points fail with their reason, the valid one
    trains, the sweep exits 2 (it used to stop at the first invalid job, with a traceback)."""
    sweep = tmp_path / "sweep"
    overrides = [o for o in base_overrides if not o.startswith("train.max_steps=")]
    proc = run_cli(["-m", *overrides, "train.max_steps=0,1,-1", f"hydra.sweep.dir={sweep}"],
                   tmp_path / "unused")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = _error_lines(proc.stderr)
    assert lines[-3] == "error: 2 of 3 sweep job(s) failed (the others ran):", lines
    assert lines[-2].startswith("  job #0 (") and lines[-2].endswith(
        "train.max_steps=0): train.max_steps: must be > 0, got 0"), lines
    assert lines[-1].startswith("  job #2 (") and lines[-1].endswith(
        "train.max_steps=-1): train.max_steps: must be > 0, got -1"), lines
    assert json.loads((sweep / "1" / "summary.json").read_text())["steps"] == 1
    assert not (sweep / "0").exists() and not (sweep / "2").exists()  # nothing left behind
    # The sweep ends by printing its summary table (launch/summarize.py): the run that
    # trained is its one row.
    table = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ")]
    assert len(table) == 2 and "final_loss" in table[0], proc.stdout[-3000:]
    assert table[1].rstrip(" |").endswith("1"), table  # its run directory, relative
    assert (sweep / "sweep_summary.md").exists()
    assert f"summary: {sweep / 'sweep_summary.md'}" in proc.stdout


def test_ctrl_c_before_training_is_one_line_exit_130(monkeypatch, tmp_path, capsys):
    """Ctrl-C while the model or the data is being built: no traceback, no run dir."""
    import sys

    import train.__main__ as entry

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    run_dir = tmp_path / "run"
    monkeypatch.setattr(entry, "_run_job", interrupted)
    monkeypatch.setattr(sys, "argv", ["train", "experiment=tiny", f"hydra.run.dir={run_dir}"])
    try:
        entry.main()
    except SystemExit as e:
        code = e.code
    else:
        code = 0
    assert code == 130
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == [f"error: interrupted (Ctrl-C); complete checkpoints, if any, are in "
                   f"{run_dir / 'checkpoints'}"]
    assert not run_dir.exists()


def test_an_uncaught_error_and_a_ctrl_c_end_up_in_train_log(base_overrides, monkeypatch,
                                                              tmp_path):
    """`python -m train`: an error nobody turned into one line (a library's, mid-training)
    ends the run with its traceback on the console, and train.log keeps the same text; an
    interrupted build is said there too (it used to hold neither)."""
    import sys

    import train.__main__ as entry
    import train.trainer as trainer_mod

    real_step = trainer_mod.Trainer.train_step

    def step_then_fail(self, batches):
        if self.step == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real_step(self, batches)

    def main(run_dir, extra=()):
        monkeypatch.setattr(sys, "argv", ["train", *base_overrides, "train.max_steps=3",
                                          "train.ckpt_every=1", f"hydra.run.dir={run_dir}",
                                          *extra])
        try:
            entry.main()
        except SystemExit as e:
            return e.code
        return 0

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", step_then_fail)
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="illegal memory access"):
        main(run_dir)
    log = (run_dir / "train.log").read_text()
    assert "uncaught error:\nTraceback (most recent call last):\n" in log
    assert log.rstrip().endswith(
        "RuntimeError: CUDA error: an illegal memory access was encountered")
    assert "in step_then_fail" in log  # the traceback itself, not only its last line
    # Ctrl-C while the continuation builds: its run directory (with a checkpoint) stays.
    monkeypatch.setattr(trainer_mod.Trainer, "fit", lambda self: (_ for _ in ()).throw(
        KeyboardInterrupt()))
    assert main(run_dir) == 130
    assert (run_dir / "train.log").read_text().rstrip().endswith("interrupted (Ctrl-C)")


def test_another_ranks_uncaught_error_is_in_train_log(monkeypatch, tmp_path):
    """Rank 0 copies the console into train.log; an error that ends the run on another
    rank is appended there too, with its rank."""
    from train.run_log import copy_output_to_run_log

    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ValueError, match="shard 7"), copy_output_to_run_log(tmp_path):
        print("rank 3 prints this to its console only")
        raise ValueError("cannot read shard 7")
    log = (tmp_path / "train.log").read_text()
    assert "rank 3 uncaught error:\nTraceback (most recent call last):\n" in log
    assert log.rstrip().endswith("ValueError: cannot read shard 7")
    assert "prints this" not in log
