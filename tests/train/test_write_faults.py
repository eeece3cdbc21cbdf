"""Faults of the machine wherever the framework writes (run dir, checkpoints, export,
prepared data, evaluation output): one line naming the path and the cause, a non-zero exit,
nothing half-written, and the last complete checkpoint still usable.

A full disk is simulated by injecting OSError(ENOSPC) into the writer in-process (the tests
run as root, for whom chmod stops nothing; a path below a regular file makes mkdir fail)."""

from __future__ import annotations

import errno
import os

import pytest
from train_helpers import compose_run, read_metrics

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("error")]


@pytest.fixture(scope="module")
def failed_save(base_overrides, tmp_path_factory):
    """A run whose second checkpoint (step 6) hits a full disk: (run dir, exit code, errors,
    stderr)."""
    import io
    import sys

    import torch

    from train.trainer import run

    run_dir = tmp_path_factory.mktemp("faults") / "run"
    overrides = base_overrides  # 6 steps, a checkpoint every 3
    real_save = torch.save

    def save(obj, f, *a, **k):
        if "step_00000006" in str(f):
            raise OSError(ENOSPC.errno, ENOSPC.strerror)  # as a write() reports it: no file
        return real_save(obj, f, *a, **k)

    errors, err = [], io.StringIO()
    mp = pytest.MonkeyPatch()
    mp.setattr(torch, "save", save)
    mp.setattr(sys, "stderr", err)
    try:
        code = run(compose_run(overrides), run_dir, overrides, errors=errors)
    finally:
        mp.undo()
    return run_dir, code, errors, err.getvalue()


def test_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_last_one(failed_save):
    from train.checkpoint import latest_complete, read_marker

    run_dir, code, errors, stderr = failed_save
    assert code == 1
    want = f"{run_dir / 'checkpoints'}: cannot write (No space left on device)"
    assert errors == [want] and _error_lines(stderr) == [f"error: {want}"], stderr
    assert "Traceback" not in stderr
    last = latest_complete(run_dir)
    assert last is not None and last.name == "step_00000003"
    assert read_marker(last)["step"] == 3
    # train.log holds the error that ended the run
    assert f"error: {want}" in (run_dir / "train.log").read_text()


def test_the_last_complete_checkpoint_resumes_after_the_fault(failed_save, base_overrides):
    from train.trainer import run

    run_dir = failed_save[0]
    overrides = [*base_overrides, "train.resume=auto"]
    assert run(compose_run(overrides), run_dir, overrides) == 0
    steps = [r["step"] for r in read_metrics(run_dir) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6], steps  # 4..6 retrained after step 3, not appended
    assert "resumed from" in (run_dir / "train.log").read_text()


def test_run_dir_that_cannot_be_made_is_one_line(base_overrides, tmp_path, capsys):
    from train.trainer import run

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    errors = []
    code = run(compose_run(base_overrides), blocker / "run", base_overrides, errors=errors)
    assert code == 1
    assert errors == [f"{blocker / 'run'}: cannot write (Not a directory)"]
    assert _error_lines(capsys.readouterr().err) == [f"error: {errors[0]}"]


def test_full_disk_during_export_leaves_no_partial_export(failed_save, tmp_path, capsys,
                                                          monkeypatch):
    from transformers import PreTrainedModel

    from train.checkpoint import latest_complete
    from train.export import main

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    out = tmp_path / "export"
    assert main([str(latest_complete(failed_save[0])), str(out)]) == 1
    err = capsys.readouterr().err
    assert _error_lines(err) == [f"error: {out}: cannot write (No space left on device)"]
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no export and no temporary directory


def test_full_disk_while_preparing_data_leaves_nothing(tmp_path, capsys, monkeypatch):
    from train.data.prepare import main
    from train.data.prepared import PackedWriter

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(PackedWriter, "write", full)
    out = tmp_path / "prepared"
    code = main(["experiment=tiny", f"data.prepared_dir={out}", "data.synthetic.enabled=false",
                 "data.sources.0.generated.num_docs=50"])
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {out}: cannot write (No space left on device)")
    assert list(tmp_path.iterdir()) == []  # no output, no temporary dir, no lock file


def test_reading_errors_are_not_reported_as_writes(tmp_path):
    """A permission error on an input is not a fault of the output directory."""
    from l2a.errors import WriteError, writing_to

    with pytest.raises(PermissionError), writing_to(tmp_path / "out"):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "input.txt"))
    with pytest.raises(WriteError, match=r"out.tmp-1/x: cannot write \(Read-only file system\)"):
        with writing_to(tmp_path / "out"):
            raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "out.tmp-1/x"))
