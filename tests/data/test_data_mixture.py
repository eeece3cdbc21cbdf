"""Mixture ratios, the short-data share and long-document upsampling, measured on the
packed output (per-segment source ids and the tokens themselves)."""

import numpy as np
import pytest
from conftest import data_config, write_jsonl

from train.data import prepare_data


def _corpus(tmp_path, name, letter, n, rng, lo=20, hi=200):
    docs = [letter * int(rng.integers(lo, hi)) for _ in range(n)]
    return write_jsonl(tmp_path / f"{name}.jsonl", docs)


def _token_shares(prepared):
    """Share of packed tokens per source, from segment ids and from the letters themselves."""
    a = prepared._arrays
    by_segment = np.bincount(
        a["seg_sources"], weights=a["seg_lens"], minlength=len(prepared.source_names)
    )
    tokens = np.asarray(a["tokens"])
    return by_segment / by_segment.sum(), tokens


@pytest.mark.parametrize("weights", [(0.7, 0.3), (0.2, 0.8)])
def test_weights_set_token_shares(tmp_path, cache_dir, byte_tok, weights):
    rng = np.random.default_rng(0)
    a = _corpus(tmp_path, "a", "a", 600, rng)
    b = _corpus(tmp_path, "b", "b", 600, rng)
    cfg = data_config(
        cache_dir,
        [{"path": a, "weight": weights[0]}, {"path": b, "weight": weights[1]}],
        seq_len=256,
    )
    prepared = prepare_data(cfg, byte_tok, tmp_path / "out", verbose=False)
    shares, tokens = _token_shares(prepared)
    assert shares == pytest.approx(weights, abs=0.03)
    # The same from the content: letters 'a' and 'b' (plus one EOS per document).
    n_a, n_b = (tokens == ord("a")).sum(), (tokens == ord("b")).sum()
    assert n_a / (n_a + n_b) == pytest.approx(weights[0], abs=0.03)
    for s, w in zip(prepared.stats["sources"], weights):
        assert s["share"] == pytest.approx(w)


def test_short_share(tmp_path, cache_dir, byte_tok):
    rng = np.random.default_rng(1)
    sources = [
        {"path": _corpus(tmp_path, "books", "k", 200, rng, 300, 900), "weight": 2},
        {"path": _corpus(tmp_path, "code", "c", 200, rng, 300, 900), "weight": 1},
        {"path": _corpus(tmp_path, "web", "w", 1500, rng, 10, 80), "weight": 1, "short": True},
    ]
    cfg = data_config(cache_dir, sources, seq_len=512, short_share=0.25)
    prepared = prepare_data(cfg, byte_tok, tmp_path / "out", verbose=False)
    shares, _ = _token_shares(prepared)
    # Long group 75% split 2:1, short group 25%.
    assert shares == pytest.approx([0.5, 0.25, 0.25], abs=0.03)


def test_long_documents_are_upsampled_within_their_source(tmp_path, cache_dir, byte_tok):
    rng = np.random.default_rng(2)
    # Half the documents are long (400-500 bytes), half short (20-100).
    docs = [
        ("L" if i % 2 else "s") * int(rng.integers(400, 500) if i % 2 else rng.integers(20, 100))
        for i in range(2000)
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", docs)
    long_tokens = sum(len(d) + 1 for d in docs if d[0] == "L")
    natural = long_tokens / sum(len(d) + 1 for d in docs)

    def long_share(factor):
        cfg = data_config(
            cache_dir,
            [{"path": path}],
            seq_len=512,
            upsample_long={"min_tokens": 300, "factor": factor},
        )
        p = prepare_data(cfg, byte_tok, tmp_path / f"out{factor}", verbose=False)
        tokens = np.asarray(p._arrays["tokens"])
        n_long, n_short = (tokens == ord("L")).sum(), (tokens == ord("s")).sum()
        return n_long / (n_long + n_short), p

    base, _ = long_share(1.0)
    up, p = long_share(3.0)
    assert base == pytest.approx(natural, abs=0.02)
    # Doc weight x3 on long documents: share = 3L / (3L + S).
    expected = 3 * natural / (3 * natural + (1 - natural))
    assert up == pytest.approx(expected, abs=0.03)
    assert p.stats["sources"][0]["long_docs_drawn"] > 1000  # long documents repeat


def test_token_budget_repeats_a_small_source(tmp_path, cache_dir, byte_tok):
    rng = np.random.default_rng(3)
    small = _corpus(tmp_path, "small", "m", 50, rng)
    big = _corpus(tmp_path, "big", "g", 1000, rng)
    cfg = data_config(
        cache_dir,
        [{"path": small, "weight": 0.5}, {"path": big, "weight": 0.5}],
        seq_len=256,
        num_tokens=60000,
    )
    prepared = prepare_data(cfg, byte_tok, tmp_path / "out", verbose=False)
    shares, _ = _token_shares(prepared)
    assert shares == pytest.approx([0.5, 0.5], abs=0.03)
    s_small = prepared.stats["sources"][0]
    assert s_small["draws"] > 3 * s_small["docs_available"]  # the small source is repeated
    assert prepared.stats["packing"]["document_tokens"] == pytest.approx(60000, rel=0.03)


def test_mixture_is_seeded(tmp_path, cache_dir, byte_tok):
    rng = np.random.default_rng(4)
    a = _corpus(tmp_path, "a", "a", 300, rng)
    b = _corpus(tmp_path, "b", "b", 300, rng)
    cfg = data_config(
        cache_dir, [{"path": a, "weight": 0.6}, {"path": b, "weight": 0.4}], seq_len=128
    )
    rows = []
    for seed, out in ((0, "o1"), (0, "o2"), (1, "o3")):
        p = prepare_data(cfg, byte_tok, tmp_path / out, seed=seed, verbose=False)
        rows.append([p.row(i)[0].tobytes() for i in range(p.num_sequences)])
    assert rows[0] == rows[1] and rows[0] != rows[2]


def test_a_source_the_mixture_mostly_leaves_out_is_said(tmp_path, cache_dir, byte_tok, capsys):
    """Equal weights, one source ten times the other: the default mixture (the largest in
    which no source repeats) takes a tenth of the large one; one warning line says so, and
    how to change it. Balanced sources, none."""
    rng = np.random.default_rng(0)
    small = _corpus(tmp_path, "small", "a", 60, rng)
    large = _corpus(tmp_path, "large", "b", 600, rng)
    sources = [{"path": small, "weight": 0.5}, {"path": large, "weight": 0.5}]
    prepared = prepare_data(data_config(cache_dir, sources, seq_len=256), byte_tok,
                            tmp_path / "out")
    warned = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    large_plan = prepared.stats["sources"][1]
    used = large_plan["unique_tokens"] / large_plan["tokens_available"]
    assert 0.05 < used < 0.2  # about the small source's tokens, of ten times as many
    assert warned == [
        f"warning: data source 'large': the mixture uses {large_plan['unique_docs']:,} of its "
        f"600 documents ({100 * used:.0f}% of its tokens): the mixture is sized by the "
        f"smallest source, 'small' (set data.num_tokens for a larger one, in which 'small' "
        f"repeats, or change the sources' weights)"]
    assert prepared.stats["warnings"] == [w.removeprefix("warning: ") for w in warned]
    # Reused, the prepared data says it again.
    prepare_data(data_config(cache_dir, sources, seq_len=256), byte_tok, tmp_path / "out")
    assert [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")] == warned
    # An explicit budget below what a source holds is named as the reason.
    budget = data_config(cache_dir, sources, seq_len=256, num_tokens=4000)
    prepare_data(budget, byte_tok, tmp_path / "budget")
    warned = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert len(warned) == 2 and all("of data.num_tokens=4,000" in w for w in warned), warned
    balanced = [{"path": small}, {"path": _corpus(tmp_path, "c", "c", 60, rng)}]
    prepared = prepare_data(data_config(cache_dir, balanced, seq_len=256), byte_tok,
                            tmp_path / "balanced")
    assert prepared.stats["warnings"] == []
    assert "warning:" not in capsys.readouterr().err
