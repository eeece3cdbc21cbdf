"""Evaluation faults: output on a full disk or an unwritable directory (one line naming the
path and the cause, exit code 1, no results.json); a model path that does not exist."""

from __future__ import annotations

import errno
import os
import sys

import pytest
from eval_helpers import tiny_l2a


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok):
    from l2a.convert import save_atomically

    return save_atomically(tiny_l2a(), tok, tmp_path_factory.mktemp("m") / "l2a")


def _main(monkeypatch, capsys, argv):
    import eval.__main__ as entry

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["eval", *argv])
    with pytest.raises(SystemExit) as e:
        entry.main()
    return e.value.code, [ln for ln in capsys.readouterr().err.splitlines()
                          if ln.startswith("error")]


def _eval_args(model_dir) -> list[str]:
    return [f"model.path={model_dir}", "eval.tasks=[niah_single]", "eval.lengths=[1024]",
            "eval.depths=[0.5]", "eval.max_new_tokens=2", "eval.perplexity.data=null",
            "eval.routing=false", "eval.plots=false"]


def test_full_disk_writing_results(model_dir, tmp_path, monkeypatch, capsys):
    from pathlib import Path

    out = tmp_path / "eval"
    real = Path.write_text

    def write_text(self, *a, **k):
        if self.name.startswith("results.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", write_text)
    code, err = _main(monkeypatch, capsys, [*_eval_args(model_dir), f"hydra.run.dir={out}"])
    assert (code, err) == (1, [f"error: {out}: cannot write (No space left on device)"])
    assert not (out / "results.json").exists()


def test_output_dir_below_a_file(model_dir, tmp_path, monkeypatch, capsys):
    """Hydra makes the output directory: its failure gets the same one line."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = _main(monkeypatch, capsys, [*_eval_args(model_dir),
                                            f"hydra.run.dir={blocker / 'eval'}"])
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"error: {blocker}") and "Not a directory" in err[0], err


def test_missing_model_path_says_so(tmp_path, monkeypatch, capsys):
    """Not the hub's complaint about repo ids: the path does not exist."""
    missing = tmp_path / "no" / "such" / "model"
    code, err = _main(monkeypatch, capsys, [f"model.path={missing}", "eval=tiny",
                                            f"hydra.run.dir={tmp_path / 'e'}"])
    assert (code, err) == (2, [f"error: model.path: {missing}: no such file or directory"])
    assert not (tmp_path / "e").exists()


def test_missing_relative_model_path_says_it_is_not_local(tmp_path, monkeypatch, capsys):
    """`runs/export` reads like a hub id: the line says it is neither a local directory nor
    a hub model (it used to say only "is not a model" with the hub's connection error)."""
    monkeypatch.chdir(tmp_path)
    code, err = _main(monkeypatch, capsys, ["model.path=runs/export", "eval=tiny",
                                            f"hydra.run.dir={tmp_path / 'e'}"])
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: model.path: runs/export: no such local directory, and not "
                             "a model on the hub ("), err
    assert not (tmp_path / "e").exists()


def test_random_model_with_a_window_above_its_context_names_the_key(tmp_path, monkeypatch,
                                                                     capsys):
    """The documented timing model (model.random=tiny) with the default window of the 128K
    recipe used to end in a traceback, exit 1 and an eval.log left behind."""
    code, err = _main(monkeypatch, capsys, ["model.random=tiny", "eval=tiny",
                                            f"hydra.run.dir={tmp_path / 'e'}"])
    assert (code, err) == (2, ["error: model.window: 4095 is above the context of "
                               "conf/model/tiny.yaml (max_position_embeddings 2048); set "
                               "model.window <= 2048"])
    assert not (tmp_path / "e").exists()

