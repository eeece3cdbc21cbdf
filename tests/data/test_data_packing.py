"""Packing: hand-computed statistics, every token kept, long-document policies."""

import json
import os
from collections import defaultdict

import numpy as np
import pytest
from conftest import data_config, segments, write_jsonl

from train.data import prepare_data
from train.data.packing import Packer, PackStats

# Byte lengths + EOS: 30, 20, 12, 10, 8, 5, and 90 (longer than a 40-token row).
HAND_MADE = ["a" * 29, "b" * 19, "c" * 11, "d" * 9, "e" * 7, "f" * 4, "g" * 89]


def test_statistics_on_a_hand_made_corpus(tmp_path, cache_dir, byte_tok):
    path = write_jsonl(tmp_path / "hand.jsonl", HAND_MADE)
    cfg = data_config(cache_dir, [{"path": path}], seq_len=40)
    prepared = prepare_data(cfg, byte_tok, tmp_path / "out", verbose=False)
    p = prepared.stats["packing"]
    # Best-fit decreasing by hand, the 90-token document split into 40 + 40 + 10:
    #   [30, 10] [20, 12, 8] [10, 5] + two full rows of the long document.
    assert p["documents"] == 7
    assert p["document_tokens"] == 175
    assert p["sequences"] == prepared.num_sequences == 5
    assert p["tokens"] == 175
    assert p["padding_tokens"] == 25
    assert p["padding_fraction"] == pytest.approx(0.125)
    assert p["segments"] == 9
    assert p["split_documents"] == 1
    assert p["truncated_documents"] == p["dropped_documents"] == 0
    assert p["histogram_edges"] == [16, 32, 40]
    assert p["histogram"] == [4, 2, 0, 1]
    assert p["histogram_tokens"] == [35, 50, 0, 90]
    fills = sorted(sorted(len(s) for s in segments(prepared, r)) for r in range(5))
    assert fills == [[5, 10], [8, 12, 20], [10, 30], [40], [40]]
    assert json.load(open(os.path.join(prepared.path, "stats.json")))["packing"] == p
    # The printed statistics carry the same numbers.
    from train.data.report import format_stats

    text = format_stats(prepared.stats)
    assert "5 sequences x 40 tokens" in text and "padding 12.50%" in text and "split 1" in text


def _random_items(n=3000, seq_len=256, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(4.0, 1.2, n).astype(int), 2, 4 * seq_len)
    return [(0, i, int(n_)) for i, n_ in enumerate(lengths)]


def _coverage(rows):
    pieces = defaultdict(list)
    for row in rows:
        for src, doc, start, length in row:
            pieces[(src, doc)].append((start, length))
    return {k: sorted(v) for k, v in pieces.items()}


@pytest.mark.parametrize("strategy", ["bfd", "greedy", "concat"])
def test_every_token_is_kept_once(strategy):
    seq_len = 256
    items = _random_items(seq_len=seq_len)
    stats = PackStats(seq_len, 1)
    rows = list(Packer(seq_len, strategy, "split", 8, stats).pack(items))
    for row in rows:
        assert 0 < sum(seg[3] for seg in row) <= seq_len
    cov = _coverage(rows)
    for _, doc, length in items:
        pieces = cov.get((0, doc), [])
        pos = 0
        for start, n in pieces:
            assert start == pos
            pos += n
        # Only a lone trailing EOS may be left out (it predicts nothing).
        assert length - pos in (0, 1) and (length - pos == 0 or strategy != "concat")
        if length <= seq_len and strategy != "concat":
            assert len(pieces) == 1  # short documents are never split
    assert stats.tokens + stats.dropped_remainders == sum(i[2] for i in items)
    if strategy == "concat":
        assert stats.padding_tokens < seq_len


def test_best_fit_pads_less_than_greedy():
    seq_len = 256
    items = _random_items(seq_len=seq_len, seed=1)
    pads = {}
    for strategy in ("bfd", "greedy"):
        stats = PackStats(seq_len, 1)
        list(Packer(seq_len, strategy, "split", 16, stats).pack(items))
        pads[strategy] = stats.padding_fraction
    assert pads["bfd"] < 0.02 < pads["greedy"]


@pytest.mark.parametrize("policy", ["split", "truncate", "drop"])
def test_long_document_policy(policy):
    seq_len = 50
    items = [(0, 0, 130), (0, 1, 20), (0, 2, 50), (0, 3, 51)]
    stats = PackStats(seq_len, 1)
    rows = list(Packer(seq_len, "bfd", policy, 4, stats).pack(items))
    cov = _coverage(rows)
    assert cov[(0, 1)] == [(0, 20)] and cov[(0, 2)] == [(0, 50)]
    if policy == "split":
        assert cov[(0, 0)] == [(0, 50), (50, 50), (100, 30)]
        assert cov[(0, 3)] == [(0, 50)]  # the remainder is a lone EOS
        assert stats.split_documents == 2 and stats.dropped_remainders == 1
    elif policy == "truncate":
        assert cov[(0, 0)] == [(0, 50)] and cov[(0, 3)] == [(0, 50)]
        assert stats.truncated_documents == 2 and stats.truncated_tokens == 80 + 1
    else:
        assert (0, 0) not in cov and (0, 3) not in cov
        assert stats.dropped_documents == 2 and stats.dropped_tokens == 181
