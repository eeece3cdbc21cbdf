"""Helpers for the data pipeline tests: hand-made corpora and small configs."""

from __future__ import annotations

import json
import os

import pytest

from train.data import DataConfig, build_byte_tokenizer


@pytest.fixture(scope="session")
def byte_tok():
    return build_byte_tokenizer()


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "cache")


def write_jsonl(path, docs, field="text") -> str:
    """``docs``: strings (written as {field: text}) or raw ``bytes`` lines written as is."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        for d in docs:
            if isinstance(d, bytes):
                fh.write(d + b"\n")
            else:
                fh.write((json.dumps({field: d}, ensure_ascii=False) + "\n").encode())
    return str(path)


def data_config(cache_dir, sources, seq_len=64, **kw) -> DataConfig:
    base = dict(seq_len=seq_len, sources=sources, cache_dir=cache_dir)
    base.update(kw)
    return DataConfig.from_dict(base)


def segments(prepared, row):
    """The document pieces of a row as lists of token ids."""
    tokens, seg_lens, _ = prepared.row(row)
    out, pos = [], 0
    for n in seg_lens.tolist():
        out.append(tokens[pos : pos + n].tolist())
        pos += n
    return out
