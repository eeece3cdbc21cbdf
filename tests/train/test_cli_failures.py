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
