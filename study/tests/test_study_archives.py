"""Unpacking the study's data archives: into place whole, a second unpack keeps what is
there, a changed archive replaces a stale copy, a missing archive is a one-line error."""

from __future__ import annotations

import argparse
import tarfile

import pytest

from study import steps as study


def _archive(path, meta: str, rows: str):
    src = path.parent / f"src-{meta}"
    for name in ("study-512", "heldout-512"):
        d = src / "prepared" / name
        d.mkdir(parents=True)
        (d / "meta.json").write_text(meta)
        (d / "tokens.bin").write_text(rows)
    with tarfile.open(path, "w:xz") as tar:
        tar.add(src / "prepared", arcname="prepared")


def test_unpack_into_place(tmp_path, monkeypatch):
    monkeypatch.setenv("L2A_DATA_DIR", str(tmp_path / "data"))
    archives = tmp_path / "archives"
    archives.mkdir()
    _archive(archives / "study-512.tar.xz", "v1", "rows-1")
    args = argparse.Namespace(scale="tiny", runs=str(tmp_path / "r"), results=str(tmp_path / "res"),
                              base_dir=str(tmp_path / "b"), max_minutes=None,
                              data_archives=str(archives))
    s = study.Study(args)
    assert s.train_module(512) == "study.train_prepared"
    prepared = tmp_path / "data" / "prepared"
    assert (prepared / "study-512" / "tokens.bin").read_text() == "rows-1"
    assert (prepared / "heldout-512" / "meta.json").read_text() == "v1"
    s.unpack_data(512)  # the same archive again: nothing moves
    assert sorted(p.name for p in prepared.iterdir()) == ["heldout-512", "study-512"]
    assert not list((tmp_path / "data").glob(".unpack-*"))
    (archives / "study-512.tar.xz").unlink()
    _archive(archives / "study-512.tar.xz", "v2", "rows-2")
    s.unpack_data(512)  # another archive: the stale copy is moved aside
    assert (prepared / "study-512" / "tokens.bin").read_text() == "rows-2"
    assert len(list(prepared.glob(".stale-study-512-*"))) == 1
    with pytest.raises(study.StudyError, match=r"study-8192\.tar\.xz: no such archive"):
        s.unpack_data(8192)
