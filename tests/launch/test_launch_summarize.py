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
    assert rows[2]["notes"] == "metrics.jsonl: 1 unreadable line (3)"  # the torn line, said
    assert rows[0]["notes"] == rows[1]["notes"] == ""

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


GOOD_ROW = b'{"step": 1, "loss": 2.0, "lm_loss": 1.9, "sparsity": 0.5}\n'
# (name, files of the damaged run, its status, its note)
DAMAGED = [
    ("garbage_line", {"metrics.jsonl": GOOD_ROW + b"garbage\n" + GOOD_ROW.replace(b"1,", b"3,", 1)},
     "incomplete", "metrics.jsonl: 1 unreadable line (2)"),
    ("non_utf8_line", {"metrics.jsonl": GOOD_ROW + b'{"step": 2, "loss": "\xff"}\n'},
     "incomplete", "metrics.jsonl: 1 unreadable line (2)"),
    ("no_step", {"metrics.jsonl": b'{"step": "one", "loss": 1}\n'},
     "no steps", "metrics.jsonl: 1 unreadable line (1)"),
    ("empty_metrics", {"metrics.jsonl": b""}, "no steps", ""),
    ("summary_not_object", {"summary.json": b"[1, 2]"},
     "no steps", "unreadable summary.json (not a JSON object)"),
    ("summary_non_utf8", {"summary.json": b'{"steps": "\xff"}', "metrics.jsonl": GOOD_ROW},
     "incomplete", "unreadable summary.json ('utf-8' codec can't decode byte 0xff"),
    ("overrides_yaml", {"metrics.jsonl": GOOD_ROW, ".hydra/overrides.yaml": b"- a: [\n"},
     "incomplete", "unreadable .hydra/overrides.yaml ("),
]


@pytest.mark.parametrize("name, files, status, note", DAMAGED, ids=[d[0] for d in DAMAGED])
def test_a_damaged_run_is_a_marked_row_not_a_traceback(sweep, name, files, status, note):
    """A sweep's summary reads every run; one with a damaged file is listed with what is
    wrong (it used to end the summary in a traceback, or vanish from the table)."""
    run = sweep / "2"
    for rel, data in files.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(data)
    out = subprocess.run([sys.executable, "-m", "launch.summarize", str(sweep), "--no-plot"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    rows = {r["run"]: r for r in csv.DictReader((sweep / "sweep_summary.csv").open())}
    assert sorted(rows) == ["0", "1", "10", "2"]  # the others are all still there
    assert rows["2"]["status"] == status
    assert rows["2"]["notes"].startswith(note) if note else rows["2"]["notes"] == ""
    if status == "incomplete":  # from the last readable row
        assert rows["2"]["final_lm_loss"] == "1.9000"
    assert rows["0"]["status"] == "done" and rows["0"]["notes"] == ""


def test_cli_cannot_write_is_a_one_line_error(sweep, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = subprocess.run([sys.executable, "-m", "launch.summarize", str(sweep), "--out",
                          str(blocker / "report")], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"error: {blocker / 'report'}: cannot write the summary (Not a directory)"], out.stderr

