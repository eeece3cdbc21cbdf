"""Small pieces of the trainer: LR schedule, checkpoint discovery and errors, metrics files."""

from __future__ import annotations

import json
import math

import pytest

from train.checkpoint import (
    COMPLETE,
    CheckpointError,
    check_resume_step,
    latest_complete,
    read_marker,
    resolve_resume,
    step_dir_name,
)
from train.lr_schedule import WarmupDecay
from train.metrics import plot_layer_sparsity, read_metrics, run_name


def test_warmup_then_cosine_to_min_ratio():
    f = WarmupDecay(warmup=4, total=24, kind="cosine", min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0)
    assert f(23) == pytest.approx(0.1)
    mid = 4 + (23 - 4) / 2
    assert f(int(mid)) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (int(mid) - 4) / 19)))
    values = [f(s) for s in range(4, 24)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay


def test_linear_and_constant_decay():
    assert WarmupDecay(0, 11, "linear", 0.0)(5) == pytest.approx(0.5)
    assert WarmupDecay(2, 10, "constant", 0.0)(9) == 1.0


def _fake_checkpoint(root, step, complete=True):
    d = root / "checkpoints" / step_dir_name(step)
    (d / "ds").mkdir(parents=True)
    (d / "hf").mkdir()
    (d / "hf" / "config.json").write_text("{}")
    if complete:
        (d / COMPLETE).write_text(json.dumps({"step": step, "world_size": 1}))
    return d


def test_latest_complete_skips_interrupted_saves(tmp_path):
    assert latest_complete(tmp_path) is None
    _fake_checkpoint(tmp_path, 2)
    four = _fake_checkpoint(tmp_path, 4)
    _fake_checkpoint(tmp_path, 6, complete=False)
    (tmp_path / "checkpoints" / ".tmp-step_00000008").mkdir()
    assert latest_complete(tmp_path) == four
    assert resolve_resume("auto", tmp_path) == four
    assert resolve_resume("never", tmp_path) is None


@pytest.mark.parametrize("case", ["missing", "incomplete", "corrupt_marker", "no_ds"])
def test_explicit_bad_checkpoint_is_one_line_error(tmp_path, case):
    path = tmp_path / "checkpoints" / step_dir_name(3)
    if case != "missing":
        path = _fake_checkpoint(tmp_path, 3, complete=case != "incomplete")
    if case == "corrupt_marker":
        (path / COMPLETE).write_text("{not json")
    if case == "no_ds":
        (path / "ds").rmdir()
    with pytest.raises(CheckpointError) as err:
        resolve_resume(str(path), tmp_path)
    msg = str(err.value)
    assert msg.startswith("train.resume: ") and str(path) in msg and "\n" not in msg


@pytest.mark.parametrize("edit, says", [
    ({"step": 7}, "says step 7, but the checkpoint is step_00000003"),
    ({"world_size": 4}, "says world_size 4, but the checkpoint holds the trainer states of 2 rank(s)"),
    ("{truncated", "corrupt marker (JSONDecodeError: "),
    ({"step": "three"}, "corrupt marker (ValueError: "),
])
def test_an_edited_marker_is_named_not_resumed(tmp_path, edit, says):
    """The marker is written whole with its checkpoint: one that disagrees with the directory
    name or the saved ranks was edited, and resuming would report a step it is not at."""
    path = _fake_checkpoint(tmp_path, 3)
    for rank in range(2):
        (path / f"trainer_state_rank{rank:05d}.pt").write_bytes(b"")
    marker = json.loads((path / COMPLETE).read_text()) | {"world_size": 2}
    text = edit if isinstance(edit, str) else json.dumps(marker | edit)
    (path / COMPLETE).write_text(text)
    for resume in ("auto", str(path)):
        with pytest.raises(CheckpointError) as err:
            check_resume_step(resolve_resume(resume, tmp_path), max_steps=10)
        msg = str(err.value)
        assert f"{path / COMPLETE}: {says}" in msg and "\n" not in msg, msg
        assert f"remove {path}" in msg  # what to do about it


def test_read_marker_returns_metadata(tmp_path):
    d = _fake_checkpoint(tmp_path, 5)
    assert read_marker(d)["step"] == 5


def test_run_name_drops_experiment_and_hydra_keys():
    assert run_name("tiny", ["experiment=tiny", "l2a.sparsity_target=0.5",
                             "hydra.run.dir=/x"]) == "tiny:l2a.sparsity_target=0.5"
    assert run_name("tiny", []) == "tiny"


def test_loss_plot_beside_the_sparsity_plot(tmp_path):
    from train.metrics import LOSS_PLOT_FILE, PLOT_FILE, plot_loss

    rows = [{"step": s, "loss": 5.0 / s, "lm_loss": 4.9 / s} for s in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = plot_loss(tmp_path)
    assert png == tmp_path / LOSS_PLOT_FILE and png.parent == (tmp_path / PLOT_FILE).parent
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": "nan"}) + "\n")
    png.unlink()
    assert plot_loss(tmp_path) is None and not png.exists()  # nothing finite to draw


def test_layer_sparsity_plot(tmp_path):
    rows = [{"step": s, "loss": 1.0, "sparsity": s / 20, "sparsity/layer_0": s / 10,
             "sparsity/layer_1": 0.0} for s in range(1, 11)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = plot_layer_sparsity(tmp_path)
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(read_metrics(tmp_path)) == 10


def test_leftovers_of_an_interrupted_save_export_or_metrics_rewrite(tmp_path):
    """What a killed run leaves in its directory, removed by the next one (under its lock);
    the run's own files stay."""
    from train.run_dir import remove_leftovers

    ckpts = tmp_path / "checkpoints"
    planted = [ckpts / ".tmp-step_00000004", ckpts / step_dir_name(2) / ".tmp-ds_universal",
               tmp_path / ".export.tmp-a1", tmp_path / "summary.json.tmp",
               tmp_path / "metrics.jsonl.tmp"]
    for p in planted:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.mkdir() if ".tmp-" in p.name else p.write_text("{")
    kept = [ckpts / step_dir_name(2) / "complete", tmp_path / "metrics.jsonl",
            tmp_path / "export" / "config.json"]
    for p in kept:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{}")
    assert sorted(remove_leftovers(tmp_path)) == sorted(planted)
    assert not any(p.exists() for p in planted) and all(p.is_file() for p in kept)
