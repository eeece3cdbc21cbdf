"""Preparing data locks the output's parent directory in place: one preparer at a time, and
no lock file left behind."""

from __future__ import annotations

import pytest
from conftest import data_config

from train.data import prepare_data
from train.data.dir_lock import locked_dir


def test_the_lock_excludes_a_second_holder_and_is_released(tmp_path):
    with locked_dir(tmp_path):
        with pytest.raises(BlockingIOError), locked_dir(tmp_path, blocking=False):
            pass
    with locked_dir(tmp_path, blocking=False):  # released on exit
        pass


def test_prepare_leaves_only_its_output(tmp_path, byte_tok):
    cfg = data_config(str(tmp_path / "cache"), [{"type": "generated",
                                                 "generated": {"num_docs": 40}}])
    out = tmp_path / "out" / "prepared"
    # What a preparation killed midway left: its temporary output, the output it replaced.
    for leftover in ("prepared.tmp-4242", "prepared.old-4242"):
        (out.parent / leftover / "sub").mkdir(parents=True)
    (out.parent / "prepared.txt").write_text("not ours")  # another name: kept
    prepare_data(cfg, byte_tok, out, verbose=False)
    assert sorted(p.name for p in out.parent.iterdir()) == ["prepared", "prepared.txt"]
    (out.parent / "prepared.txt").unlink()
    (out.parent / "prepared.tmp-4243").mkdir()  # and when the output is reused
    prepare_data(cfg, byte_tok, out, verbose=False)  # the reuse path too
    assert [p.name for p in out.parent.iterdir()] == ["prepared"]
