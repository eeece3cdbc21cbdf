"""A corrupt `datasets` cache (data.cache_dir): one line naming the cache and how to rebuild
it, nothing half-written, the lock released."""

from __future__ import annotations

import glob
import os

import pytest
from conftest import data_config, write_jsonl

from train.data import DataError, prepare_data
from train.data.dir_lock import locked_dir
from train.data.textgen import generated_documents

DOCS = [t for _, t in generated_documents(5, 0, 40, 3, 60)]


def test_corrupt_datasets_cache_is_one_line_and_leaves_nothing(tmp_path, cache_dir, byte_tok):
    cfg = data_config(cache_dir, [{"path": write_jsonl(tmp_path / "a.jsonl", DOCS)}])
    prepare_data(cfg, byte_tok, tmp_path / "first", verbose=False)
    arrows = glob.glob(os.path.join(cache_dir, "**", "*.arrow"), recursive=True)
    assert arrows
    for f in arrows:
        with open(f, "wb") as fh:
            fh.write(b"not arrow" * 8)
    out = tmp_path / "second"
    with pytest.raises(DataError) as e:
        prepare_data(cfg, byte_tok, out, verbose=False)
    msg = str(e.value)
    assert "\n" not in msg
    cache = os.path.abspath(cache_dir)
    assert msg.startswith(f"data.cache_dir: cannot read source '{cfg.sources[0].name}' from the "
                          f"datasets cache {cache} (ArrowInvalid: "), msg
    assert msg.endswith(f"delete {cache} to rebuild it")
    assert not out.exists() and not glob.glob(f"{out}.tmp-*")
    with locked_dir(out.parent, blocking=False):  # released: no other process holds it
        pass
    assert not glob.glob(f"{out.parent}/*.lock")  # and no lock file was left behind
    # And the advice works.
    import shutil

    shutil.rmtree(cache)
    assert prepare_data(cfg, byte_tok, out, verbose=False).num_sequences > 0
