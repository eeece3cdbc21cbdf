"""`type: files` sources: file selection (patterns, size, empty, dedup, split by file),
reading through prepare_data, bad files, config errors."""

import gzip
import os

import pytest
from conftest import data_config, segments

from train.data import ConfigError, DataError, prepare_data
from train.data.config import FilesConfig
from train.data.file_corpus import holdout_bucket, select_files


def _tree(root, files: dict):
    for rel, body in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body if isinstance(body, bytes) else body.encode())
    return str(root)


def _documents(prepared, tok):
    pieces = []
    for r in range(prepared.num_sequences):
        pieces.extend(segments(prepared, r))
    text = tok.decode([t for p in pieces for t in p])
    return sorted(d for d in text.split("<|endoftext|>") if d)


def test_selection_rules(tmp_path):
    root = _tree(tmp_path / "t", {
        "b/mod.py": "print('b')\n",
        "a/mod.py": "print('b')\n",          # same content as b/mod.py, sorts first: kept
        "a/keep.py": "x = 1\n",
        "a/notes.txt": "not python\n",       # not included
        "tests/t.py": "assert True\n",       # excluded
        "a/empty.py": "  \n\n",              # whitespace only
        "a/big.py": "y = 2\n" * 100,         # over max_file_bytes
        "docs/readme.py.gz": gzip.compress(b"z = 3\n"),
    })
    cfg = FilesConfig(include=["*.py", "*.py.gz"], exclude=["tests/*"], max_file_bytes=200)
    sel = select_files(root, cfg, "all", "here")
    assert sel.rels == ["a/keep.py", "a/mod.py", "docs/readme.py.gz"]
    assert sel.skipped == {"duplicate": 1, "empty": 1, "too large": 1}
    assert sel.sizes == [6, 11, 6]  # the gz file counts its decompressed text
    no_dedup = select_files(root, FilesConfig(include=["*.py"], exclude=["tests/*"],
                                              max_file_bytes=200, dedup=False), "all", "here")
    assert no_dedup.rels == ["a/keep.py", "a/mod.py", "b/mod.py"]
    # The manifest changes with a file's content, not with the walk order.
    before = sel.manifest()["digest"]
    (tmp_path / "t" / "a" / "keep.py").write_text("x = 2\n")
    assert select_files(root, cfg, "all", "here").manifest()["digest"] != before


def test_split_by_file_is_disjoint_complete_and_stable(tmp_path):
    files = {f"pkg{i % 7}/m{i:03d}.py": f"v = {i}\n" for i in range(400)}
    root = _tree(tmp_path / "t", files)
    cfg = FilesConfig(include=["*.py"], holdout=0.25)
    train = select_files(root, cfg, "train", "here").rels
    val = select_files(root, cfg, "validation", "here").rels
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(files)
    # 400 files at p = 0.25: the binomial standard deviation is 8.7; 5 sigma either side.
    assert 100 - 44 <= len(val) <= 100 + 44
    assert all(holdout_bucket(r) < 0.25 for r in val)
    # Adding files elsewhere does not move any file to the other side.
    _tree(tmp_path / "t", {f"new/n{i}.py": f"w = {i}\n" for i in range(50)})
    val2 = select_files(root, cfg, "validation", "here").rels
    assert [r for r in val2 if not r.startswith("new/")] == val


def test_prepare_reads_every_selected_file_once(tmp_path, cache_dir, byte_tok):
    docs = {f"d{i}/f{i}.md": f"document {i}\n" + "word " * (i + 1) for i in range(30)}
    root = _tree(tmp_path / "t", {**docs, "copy.md": docs["d3/f3.md"], "skip.bin": b"\x00\xff"})
    cfg = data_config(cache_dir, [{"path": root, "type": "files", "files": {"include": ["*.md"]}}],
                      seq_len=512)
    prepared = prepare_data(cfg, byte_tok, tmp_path / "out", verbose=False)
    assert _documents(prepared, byte_tok) == sorted(docs.values())


def test_stdlib_root_resolves():
    sel = select_files("python:stdlib", FilesConfig(include=["json/*.py"]), "all", "here")
    assert "json/decoder.py" in sel.rels


def test_bad_files_and_config(tmp_path, cache_dir, byte_tok):
    root = _tree(tmp_path / "t", {"a.txt": "fine\n", "b.txt": b"caf\xe9\n"})
    src = {"path": root, "type": "files", "files": {"include": ["*.txt"]}}
    with pytest.raises(DataError, match=r"b\.txt: non-UTF-8 bytes \(byte 4 of the file\)"):
        prepare_data(data_config(cache_dir, [src]), byte_tok, tmp_path / "o1", verbose=False)
    assert not os.path.exists(tmp_path / "o1")
    ok = prepare_data(data_config(cache_dir, [src], max_bad_records=1), byte_tok,
                      tmp_path / "o2", verbose=False)
    assert _documents(ok, byte_tok) == ["fine\n"]
    with pytest.raises(DataError, match="no files selected"):
        prepare_data(data_config(cache_dir, [{**src, "files": {"include": ["*.py"]}}]),
                     byte_tok, tmp_path / "o3", verbose=False)
    with pytest.raises(DataError, match="python:nope: unknown sysconfig path"):
        prepare_data(data_config(cache_dir, [{**src, "path": "python:nope"}]), byte_tok,
                     tmp_path / "o4", verbose=False)
    bad = [
        ({"files": {"holdout": 1.0}}, r"data\.sources\.0\.files\.holdout: must be in"),
        ({"files": {"include": []}}, r"data\.sources\.0\.files\.include: must name"),
        ({"files": {"incl": ["*"]}}, r"data\.sources\.0\.files\.incl: unknown key"),
        ({"split": "test"}, r"data\.sources\.0\.split: must be one of train, validation, all"),
        ({"type": "text"}, r"data\.sources\.0\.files: only for type: files"),
    ]
    for change, message in bad:
        with pytest.raises(ConfigError, match=message):
            data_config(cache_dir, [{**src, **change}])
