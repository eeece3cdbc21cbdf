"""python -m launch.summarize on synthetic sweep directories shaped like the trainer's runs
(summary.json, metrics.jsonl, .hydra/overrides.yaml)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from launch.summarize import find_runs, summarize

REPO = Path(__file__).resolve().parents[2]


def _run(sweep: Path, num: str, overrides: list[str], summary: dict | None = None,
         metrics: list[dict] | None = None, torn: bool = False) -> Path:
    run = sweep / num
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        text = "".join(json.dumps(m) + "\n" for m in metrics)
        (run / "metrics.jsonl").write_text(text + ('{"step": 99, "lo' if torn else ""))
    if summary is not None:
        (run / "summary.json").write_text(json.dumps({"overrides": overrides, **summary}))
    return run


def _summary(loss, lm, sparsity, target, steps=20, tps=1234.5):
    return {"experiment": "tiny", "steps": steps, "final_loss": loss, "final_lm_loss": lm,
            "sparsity": sparsity, "layer_sparsity": [sparsity], "sparsity_target": target,
            "tokens_per_s": tps, "export_dir": None}


@pytest.fixture
def sweep(tmp_path):
    sweep = tmp_path / "multirun" / "tiny" / "2026-01-01_00-00-00"
    base = ["experiment=tiny", "train.max_steps=20"]
    _run(sweep, "0", base + ["l2a.sparsity_target=0.6"], _summary(3.1, 3.0, 0.58, 0.6))
    # Requeued once: the resume override is repeated, and must not become a column.
    _run(sweep, "1", base + ["l2a.sparsity_target=0.8", "train.resume=auto"],
         _summary(3.4, 3.2, 0.79, 0.8, tps=1000.0))
    # Still running (or killed): no summary, a torn last line.
    _run(sweep, "10", base + ["l2a.sparsity_target=0.9"], None,
         [{"step": 1, "loss": 5.0, "lm_loss": 4.9, "sparsity": 0.1, "tokens_per_s": 900.0},
          {"step": 2, "loss": 4.0, "lm_loss": 3.9, "sparsity": 0.3, "tokens_per_s": 1100.0}],
         torn=True)
    # Hydra/submitit bookkeeping below the sweep dir is not a run.
    (sweep / ".submitit" / "123_0").mkdir(parents=True)
    (sweep / ".submitit" / "123_0" / "metrics.jsonl").write_text('{"step": 1, "loss": 0}\n')
    return sweep


def test_table_has_one_row_per_run_and_the_varying_override(sweep):
    paths = summarize(sweep)
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["run"] for r in rows] == ["0", "1", "10"]  # numeric order, not "0, 1, 10" by luck
    assert [r["l2a.sparsity_target"] for r in rows] == ["0.6", "0.8", "0.9"]
    assert "train.resume" not in rows[0] and "experiment" not in rows[0]
    assert rows[0]["final_loss"] == "3.1000" and rows[0]["final_lm_loss"] == "3.0000"
    assert rows[1]["sparsity"] == "0.7900" and rows[1]["tokens_per_s"] == "1000"
    assert rows[0]["steps"] == "20" and rows[0]["status"] == "done"
    # The incomplete run: last complete metrics line, mean throughput, target from overrides.
    assert rows[2]["status"] == "incomplete" and rows[2]["steps"] == "2"
    assert rows[2]["final_loss"] == "4.0000" and rows[2]["sparsity"] == "0.3000"
    assert rows[2]["tokens_per_s"] == "1000" and rows[2]["sparsity_target"] == "0.9000"

    md = paths["markdown"].read_text()
    assert "Shared overrides: `experiment=tiny` `train.max_steps=20`" in md
    assert md.count("\n| 0.") == 3
    assert "| l2a.sparsity_target | final_loss | final_lm_loss | sparsity |" in md

    png = paths["plot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_cli_prints_markdown_and_writes_elsewhere(sweep, tmp_path):
    out_dir = tmp_path / "report"
    out = subprocess.run([sys.executable, "-m", "launch.summarize", str(sweep), "--out", str(out_dir)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "| 0.8 |" in out.stdout
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "sweep_summary.csv", "sweep_summary.md", "sweep_summary.png"]
    assert not (sweep / "sweep_summary.csv").exists()


def test_single_run_directory_is_a_sweep_of_one(tmp_path):
    run = _run(tmp_path, "run", ["experiment=tiny"], _summary(2.0, 1.9, 0.5, None))
    (row,) = list(csv.DictReader(summarize(run.parent, make_plot=False)["csv"].open()))
    assert row["run"] == "run" and row["final_lm_loss"] == "1.9000" and row["sparsity_target"] == ""


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_bad_sweep_dir_is_a_one_line_error(tmp_path, make):
    target = tmp_path / "sweep"
    if make == "empty":
        target.mkdir()
    out = subprocess.run([sys.executable, "-m", "launch.summarize", str(target)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.startswith(f"error: {target}:") and len(out.stderr.strip().splitlines()) == 1
    assert not target.exists() or not any(target.iterdir())


def test_unreadable_summary_falls_back_to_metrics(tmp_path):
    run = _run(tmp_path, "0", ["l2a.sparsity_target=0.7"], None,
               [{"step": 5, "loss": 2.5, "lm_loss": 2.4, "sparsity": 0.6}])
    (run / "summary.json").write_text("{not json")
    (found,) = find_runs(tmp_path)
    assert found.metrics["steps"] == 5 and found.metrics["sparsity_target"] == 0.7
