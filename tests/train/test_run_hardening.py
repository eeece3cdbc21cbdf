"""A user's mistakes around resuming and stopping a run, each ending in one line and the
documented exit code: a run directory as `train.resume`, a checkpoint past
`train.max_steps`, a checkpoint of another model shape, Ctrl-C during training; and what
`train.log` holds. One 2-step run provides the checkpoint all of them start from."""

from __future__ import annotations

import json
import os
import signal
import types

import pytest
from train_helpers import compose_run, read_metrics, run_in_process

import train.trainer as trainer_mod
from l2a.errors import WriteError
from train.checkpoint import CheckpointError
from train.config import ConfigError
from train.data import DataError


@pytest.fixture(scope="module")
def first_run(base_overrides, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("first")
    old_umask = os.umask(0o027)  # test_checkpoints_follow_the_umask
    try:
        code, _ = run_in_process(base_overrides + ["train.max_steps=2", "train.ckpt_every=0"],
                                 run_dir)
    finally:
        os.umask(old_umask)
    assert code == 0 and (run_dir / "checkpoints" / "step_00000002" / "complete").is_file()
    return run_dir


def _run(overrides, run_dir, capsys):
    """train.trainer.run as `python -m train` calls it -> (exit code, stderr lines)."""
    capsys.readouterr()
    code = trainer_mod.run(compose_run(overrides), run_dir, overrides)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    return code, err


def test_resume_from_a_run_directory_continues_it_and_logs(first_run, base_overrides, tmp_path,
                                                           capsys):
    """`train.resume=<run dir>` means its latest complete checkpoint (it used to be taken
    for an interrupted save); train.log holds the run's own lines."""
    overrides = base_overrides + [f"train.resume={first_run}", "train.max_steps=3"]
    code, err = _run(overrides, tmp_path, capsys)
    assert code == 0 and not err
    assert [r["step"] for r in read_metrics(tmp_path)] == [3]
    log = (tmp_path / "train.log").read_text()
    assert f"resumed from {first_run / 'checkpoints' / 'step_00000002'} (step 2)" in log
    assert "parameters trainable" in log  # the configuration summary
    assert "prepared data" in log.lower()  # data statistics
    assert "step 3/3 loss " in log  # a progress line
    assert "final loss" in log


def test_resume_past_max_steps_is_a_one_line_error(first_run, base_overrides, tmp_path, capsys):
    overrides = base_overrides + [f"train.resume={first_run}", "train.max_steps=1"]
    code, err = _run(overrides, tmp_path, capsys)
    assert code == 2
    assert len(err) == 1 and "step 2, past train.max_steps=1" in err[0], err


def test_resumed_at_max_steps_exports_the_checkpoint(first_run, base_overrides, tmp_path, capsys):
    """Nothing left to train, in a new run directory: the export is of the resumed
    checkpoint (it used to end in a TypeError: no checkpoint in the new directory)."""
    overrides = base_overrides + [f"train.resume={first_run}", "train.max_steps=2",
                                  "train.export=true"]
    code, err = _run(overrides, tmp_path, capsys)
    assert code == 0 and not err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 2 and (tmp_path / "export" / "config.json").is_file()


def test_an_edited_marker_stops_the_resume_before_any_work(first_run, base_overrides, tmp_path,
                                                           capsys):
    """A marker edited to another step: resuming used to print "resumed from ... (step 2)"
    after a check of train.max_steps against the edited step, or, with a renamed checkpoint,
    go on. Now one line naming the marker, exit 2, no step logged in the run directory."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(first_run, run_dir)
    ckpt = run_dir / "checkpoints" / "step_00000002"
    marker = json.loads((ckpt / "complete").read_text())
    (ckpt / "complete").write_text(json.dumps(marker | {"step": 1}))
    (run_dir / "metrics.jsonl").unlink()
    code, err = _run(base_overrides + ["train.max_steps=3"], run_dir, capsys)  # resume=auto
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {ckpt / 'complete'}: says step 1, but the checkpoint is "
                             f"step_00000002"), err[0]
    assert not (run_dir / "metrics.jsonl").exists()
    # Renamed out of its step_<N> name, the marker is checked against the trainer state.
    renamed = tmp_path / "kept"
    shutil.copytree(ckpt, renamed)
    code, err = _run(base_overrides + [f"train.resume={renamed}", "train.max_steps=3"],
                     tmp_path / "second", capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {renamed / 'complete'}: says step 1, but "
                             f"trainer_state_rank00000.pt is at step 2"), err[0]
    assert not (tmp_path / "second" / "metrics.jsonl").exists()


def test_resume_after_a_torn_metrics_line(first_run, base_overrides, tmp_path, capsys):
    """A run killed while writing its metrics line leaves it torn: resuming used to end in
    a JSONDecodeError traceback. Now the line is dropped, with a warning naming it."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(first_run, run_dir)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')
    capsys.readouterr()
    code = trainer_mod.run(compose_run(base_overrides + ["train.max_steps=3"]), run_dir,
                           base_overrides)
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"warning: {run_dir / 'metrics.jsonl'}: dropped 1 unreadable line (3) on resume" in err
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3]
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["step"] for line in lines)


def test_resume_with_another_model_shape_names_the_parameter(first_run, base_overrides, tmp_path,
                                                              capsys):
    overrides = base_overrides + [f"train.resume={first_run}", "train.max_steps=3",
                                  "model.random_base.intermediate_size=96"]
    code, err = _run(overrides, tmp_path, capsys)
    assert code == 2 and len(err) == 1, err
    assert "size mismatch for lm.model.layers.0.mlp.gate_proj.weight" in err[0], err[0]
    assert "[128, 64]" in err[0] and "[96, 64]" in err[0], err[0]


def test_ctrl_c_finishes_the_step_checkpoints_and_exits_130(base_overrides, tmp_path):
    def interrupt_after_first_step(trainer):
        step = trainer.train_step

        def step_then_ctrl_c(batches):
            metrics = step(batches)
            if trainer.step == 1:
                os.kill(os.getpid(), signal.SIGINT)
            return metrics

        trainer.train_step = step_then_ctrl_c

    before = signal.getsignal(signal.SIGINT)
    code, _ = run_in_process(base_overrides + ["train.max_steps=4", "train.ckpt_every=0"],
                             tmp_path, trainer_hook=interrupt_after_first_step)
    assert code == 130
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]
    assert (tmp_path / "checkpoints" / "step_00000001" / "complete").is_file()
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("error, code", [(ConfigError("train.x: bad"), 2),
                                         (CheckpointError("/ckpt: corrupt"), 2),
                                         (DataError("data.sources.0.path: missing"), 2),
                                         (trainer_mod.NonFiniteError("step 3: nan"), 1),
                                         (WriteError("/run/checkpoints: cannot write (No space "
                                                     "left on device)"), 1)])
def test_exit_codes_of_run(monkeypatch, tmp_path, capsys, error, code):
    """docs/DESIGN.md: 2 for config, data and checkpoint errors; 1 for a non-finite loss or
    a machine fault (full disk)."""
    def failing(*_a, **_k):
        raise error

    monkeypatch.setattr(trainer_mod, "Trainer", failing)
    errors: list[str] = []
    cfg = types.SimpleNamespace(train=types.SimpleNamespace(verbose=False), warnings=[])
    assert trainer_mod.run(cfg, tmp_path, [], errors=errors) == code
    assert capsys.readouterr().err.strip() == f"error: {error}"
    assert errors == [str(error)]
    assert f"error: {error}" in (tmp_path / "train.log").read_text()


def test_state_dict_error_is_cut_to_its_first_cause():
    """torch's load_state_dict error starts with a header line; the line shown names the
    parameter and both shapes."""
    import torch

    from l2a.errors import first_line

    with pytest.raises(RuntimeError) as e:
        torch.nn.Linear(4, 3).load_state_dict(torch.nn.Linear(4, 5).state_dict())
    assert first_line(e.value, with_type=True) == (
        "RuntimeError: size mismatch for weight: copying a param with shape torch.Size([5, 4]) "
        "from checkpoint, the shape in current model is torch.Size([3, 4]). (and 1 more)")
    assert first_line(ValueError("one\ntwo"), with_type=True) == "ValueError: one"


def test_export_to_a_path_that_is_a_file(first_run, tmp_path, capsys):
    from train.export import main

    out = tmp_path / "model.safetensors"
    out.write_text("keep")
    assert main([str(first_run), str(out)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == [f"error: {out}: exists and is not a directory (choose another output path)"]
    assert out.read_text() == "keep"


def test_checkpoints_follow_the_umask(first_run):
    """The first run was made under umask 027: teammates of the group can read it."""
    import stat

    ckpt = first_run / "checkpoints"
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [ckpt, *ckpt.rglob("*")]}
    assert {m for p, m in modes.items() if p.is_dir()} == {0o750}
    files = {p.name: m for p, m in modes.items() if p.is_file()}
    # DeepSpeed writes its recovery scripts executable: 0740 under this umask.
    assert {m for m in files.values()} <= {0o640, 0o740}, files
    assert {n for n, m in files.items() if m == 0o740} <= {"zero_to_fp32.py", "zero_to_torch.py"}, files


def test_resume_from_a_directory_that_is_neither(tmp_path):
    from train.checkpoint import resolve_resume

    (tmp_path / "notes").mkdir()
    with pytest.raises(CheckpointError) as e:
        resolve_resume(str(tmp_path / "notes"), tmp_path)
    assert str(e.value) == (f"train.resume: {tmp_path / 'notes'}: neither a checkpoint "
                            f"(step_<N>/ with 'complete') nor a run directory (with checkpoints/)")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="run directory without a complete checkpoint"):
        resolve_resume(str(tmp_path / "run"), tmp_path)
