"""The pure-PyTorch ops against the dense masked reference: output and every gradient."""

from __future__ import annotations

import pytest
import torch
from attention_reference import (
    make_route,
    random_doc_ids,
    reference_with_grads,
    rel_err,
    run_with_grads,
    sliding_window_reference,
    token_sparse_reference,
)

import kernels
from kernels import masked_attention

NAMES = ("o", "dq", "dk", "dv")


def _inputs(B, Hq, Hkv, T, D, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, T, D, generator=g, dtype=dtype)
    k = torch.randn(B, Hkv, T, D, generator=g, dtype=dtype)
    v = torch.randn(B, Hkv, T, D, generator=g, dtype=dtype)
    do = torch.randn(B, Hq, T, D, generator=g, dtype=dtype)
    return q, k, v, do, g


def _compare(got, ref, tol):
    for name, a, b in zip(NAMES, got, ref):
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) < tol, (name, rel_err(a, b))


@pytest.mark.parametrize("route_kind", ["none", "all", "single", "random", "mixed"])
@pytest.mark.parametrize(
    "T,Hq,Hkv,D,n_docs", [(63, 4, 1, 16, 1), (500, 8, 2, 32, 4), (130, 8, 8, 64, 3)]
)
def test_token_sparse_naive_matches_dense(route_kind, T, Hq, Hkv, D, n_docs, monkeypatch):
    # A small score budget forces several query chunks per row.
    monkeypatch.setattr(masked_attention, "SCORE_BUDGET", 16 * 8 * 64)
    B = 2
    q, k, v, do, g = _inputs(B, Hq, Hkv, T, D, seed=T + Hq)
    route = make_route(B, T, route_kind, g)
    doc_ids = random_doc_ids(B, T, n_docs, g) if n_docs > 1 else None
    got = run_with_grads(
        kernels.token_sparse_attention, q, k, v, do, route, doc_ids, backend="torch"
    )
    ref = reference_with_grads(token_sparse_reference, q, k, v, do, route, doc_ids)
    _compare(got, ref, 1e-5)
    # Unrouted rows: exact zeros in the output and in dq.
    unrouted = ~route[:, None, :, None].expand_as(got[0])
    assert (got[0][unrouted] == 0).all() and (got[1][unrouted] == 0).all()


@pytest.mark.parametrize("window", [1, 7, 64, 1000])
@pytest.mark.parametrize("T,Hq,Hkv,D,n_docs", [(63, 4, 1, 16, 1), (500, 8, 2, 32, 5)])
def test_sliding_window_naive_matches_dense(window, T, Hq, Hkv, D, n_docs, monkeypatch):
    monkeypatch.setattr(masked_attention, "SCORE_BUDGET", 16 * 8 * 64)
    B = 2
    q, k, v, do, g = _inputs(B, Hq, Hkv, T, D, seed=window + T)
    doc_ids = random_doc_ids(B, T, n_docs, g) if n_docs > 1 else None
    got = run_with_grads(
        kernels.sliding_window_attention, q, k, v, do, window, doc_ids, backend="torch"
    )
    ref = reference_with_grads(sliding_window_reference, q, k, v, do, window, doc_ids)
    _compare(got, ref, 1e-5)


def test_naive_bf16_keeps_dtype_and_is_close():
    q, k, v, do, g = _inputs(2, 4, 2, 100, 32, seed=0, dtype=torch.bfloat16)
    route = make_route(2, 100, "random", g)
    o = kernels.token_sparse_attention(q, k, v, route)
    assert o.dtype == torch.bfloat16
    assert rel_err(o, token_sparse_reference(q, k, v, route)) < 1e-2
    o = kernels.sliding_window_attention(q, k, v, 16)
    assert o.dtype == torch.bfloat16
    assert rel_err(o, sliding_window_reference(q, k, v, 16)) < 1e-2


def test_window_covering_sequence_equals_full_routing():
    q, k, v, _, g = _inputs(2, 4, 2, 90, 16, seed=1)
    doc_ids = random_doc_ids(2, 90, 3, g)
    route = torch.ones(2, 90, dtype=torch.bool)
    a = kernels.sliding_window_attention(q, k, v, 90, doc_ids)
    b = kernels.token_sparse_attention(q, k, v, route, doc_ids)
    torch.testing.assert_close(a, b)


def test_doc_ids_from_position_ids():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1], [5, 6, 7, 8, 9, 10, 11, 12]])
    expect = torch.tensor([[0, 0, 0, 1, 1, 2, 3, 3], [0, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.int32)
    got = kernels.doc_ids_from_position_ids(pos)
    assert got.dtype == torch.int32
    assert torch.equal(got, expect)
    assert torch.equal(kernels.doc_ids_from_position_ids(pos[0]), expect[:1])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"q": torch.randn(2, 4, 8)}, "q: expected shape"),
        (
            {"k": torch.randn(1, 3, 8, 16), "v": torch.randn(1, 3, 8, 16)},
            "multiple of key/value heads",
        ),
        ({"v": torch.randn(1, 2, 8, 8)}, "k and v must have the same shape"),
        ({"route": torch.ones(1, 8)}, "route: expected a bool tensor"),
        ({"route": torch.ones(1, 7, dtype=torch.bool)}, r"route: expected shape \(B, T\)"),
        ({"doc_ids": torch.zeros(1, 8)}, "doc_ids: expected an integer tensor"),
        ({"backend": "cuda"}, "backend: expected"),
        ({"scale": -1.0}, "scale: expected a positive number"),
        (
            {k: torch.randn(1, 2, 8, 16, dtype=torch.float64) for k in "qkv"}
            | {"backend": "triton"},
            "backend='triton': needs bf16/fp16/fp32",
        ),
    ],
)
def test_token_sparse_rejects_bad_input(kwargs, match):
    args = {
        "q": torch.randn(1, 4, 8, 16),
        "k": torch.randn(1, 2, 8, 16),
        "v": torch.randn(1, 2, 8, 16),
        "route": torch.ones(1, 8, dtype=torch.bool),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        kernels.token_sparse_attention(**args)


@pytest.mark.parametrize("window", [0, -3, 2.5, True])
def test_sliding_window_rejects_bad_window(window):
    x = torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match="window: expected an int >= 1"):
        kernels.sliding_window_attention(x, x, x, window)
