"""Queries at the end of a longer key sequence (prefill chunks and decoding steps against a
KV cache): both ops on every path against the dense fp64 reference of the whole sequence,
whose last rows these queries are.

Paths: the PyTorch reference (`torch`), the kernels with a query offset (`triton`, more than
`DECODE_MAX_QUERIES` queries; the interpreter on CPU) and the folded-SDPA decoding path
(`triton` with few queries). Document ids cover the keys; padding is one more document.
"""

from __future__ import annotations

import pytest
import torch
from attention_reference import (
    allowed_mask,
    dense_attention,
    make_route,
    random_doc_ids,
    rel_err,
)

import kernels
from kernels.decode import DECODE_MAX_QUERIES


def _reference(q, k, v, window, doc_ids, route=None):
    """Dense fp64 attention over all Tk positions (queries zero-padded at the front), last
    Tq rows."""
    B, Hq, tq, D = q.shape
    tk = k.shape[2]
    q_full = torch.zeros(B, Hq, tk, D, dtype=q.dtype, device=q.device)
    q_full[:, :, tk - tq :] = q
    o = dense_attention(q_full, k, v, allowed_mask(tk, doc_ids, B, window))[:, :, tk - tq :]
    if route is not None:
        o = o * route[:, None, :, None].double()
    return o


def _inputs(tq, tk, Hq, Hkv, D, n_docs, seed):
    g = torch.Generator().manual_seed(seed)
    B = 2
    q = torch.randn(B, Hq, tq, D, generator=g)
    k = torch.randn(B, Hkv, tk, D, generator=g)
    v = torch.randn(B, Hkv, tk, D, generator=g)
    doc_ids = random_doc_ids(B, tk, n_docs, g) if n_docs > 1 else None
    return q, k, v, doc_ids, g


CASES = [  # (Tq, Tk, Hq, Hkv, D, documents over the keys)
    (1, 70, 4, 2, 16, 1),
    (1, 70, 4, 1, 16, 3),
    (5, 70, 6, 2, 16, 2),
    (DECODE_MAX_QUERIES + 1, 90, 4, 2, 32, 1),
    (40, 130, 8, 2, 16, 3),
    (63, 64, 4, 4, 16, 2),
]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("case", CASES)
def test_sliding_window_suffix(backend, case):
    tq, tk, Hq, Hkv, D, n_docs = case
    q, k, v, doc_ids, _ = _inputs(tq, tk, Hq, Hkv, D, n_docs, seed=tq + tk)
    for window in (1, 9, tk):
        o = kernels.sliding_window_attention(q, k, v, window, doc_ids, backend=backend)
        ref = _reference(q, k, v, window, doc_ids)
        assert o.shape == q.shape
        assert rel_err(o, ref) < 1e-5, (window, rel_err(o, ref))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("case", CASES)
def test_token_sparse_suffix(backend, case):
    tq, tk, Hq, Hkv, D, n_docs = case
    q, k, v, doc_ids, g = _inputs(tq, tk, Hq, Hkv, D, n_docs, seed=7 * tq + tk)
    for kind in ("random", "all", "none"):
        route = make_route(2, tq, kind, g)
        o = kernels.token_sparse_attention(q, k, v, route, doc_ids, backend=backend)
        ref = _reference(q, k, v, None, doc_ids, route)
        assert rel_err(o, ref, floor=1e-3) < 1e-5, (kind, rel_err(o, ref))
        assert torch.all(o.transpose(1, 2)[~route] == 0)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("case", [c for c in CASES if c[0] > DECODE_MAX_QUERIES])
def test_compacted_queries_suffix(backend, case):
    """`routed_query_attention` with the routed queries of a chunk at the end of the keys
    (a prefill chunk with routed-only projections): rows = the reference's routed rows."""
    from kernels.token_sparse.compact import routed_query_attention, routed_slots

    tq, tk, Hq, Hkv, D, n_docs = case
    q, k, v, doc_ids, g = _inputs(tq, tk, Hq, Hkv, D, n_docs, seed=3 * tq + tk)
    for kind in ("random", "all", "none"):
        route = make_route(2, tq, kind, g)
        slots, valid = routed_slots(route)
        idx = slots[:, None, :, None].expand(2, Hq, slots.shape[1], D)
        o_c = routed_query_attention(q.gather(2, idx), k, v, route, doc_ids, backend=backend)
        ref = _reference(q, k, v, None, doc_ids, route).gather(2, idx)
        ref = ref * valid[:, None, :, None]
        assert o_c.shape == ref.shape
        assert rel_err(o_c, ref, floor=1e-3) < 1e-5, (kind, rel_err(o_c, ref))


def test_triton_suffix_has_no_backward():
    q, k, v, _, _ = _inputs(DECODE_MAX_QUERIES + 4, 50, 4, 2, 16, 1, seed=0)
    q.requires_grad_(True)
    o = kernels.sliding_window_attention(q, k, v, 8, backend="triton")
    with pytest.raises(RuntimeError, match="no backward"):
        o.sum().backward()


def test_fewer_keys_than_queries_is_an_error():
    q, k, v, _, _ = _inputs(10, 10, 4, 2, 16, 1, seed=0)
    with pytest.raises(ValueError, match="fewer keys than queries"):
        kernels.sliding_window_attention(q, k[:, :, :9], v[:, :, :9], 4)


@pytest.mark.gpu
@pytest.mark.parametrize("tq", [1, 7, 300])
def test_suffix_gpu_bf16(tq):
    tk = 3000
    q, k, v, doc_ids, g = _inputs(tq, tk, 32, 8, 128, 3, seed=tq)
    q, k, v = (t.cuda().bfloat16() for t in (q, k, v))
    doc_ids = doc_ids.cuda()
    route = make_route(2, tq, "random", g).cuda()
    o = kernels.token_sparse_attention(q, k, v, route, doc_ids)
    ref = _reference(q.float(), k.float(), v.float(), None, doc_ids, route)
    assert rel_err(o, ref, floor=1e-3) < 2e-2
    o = kernels.sliding_window_attention(q, k, v, 1024, doc_ids)
    ref = _reference(q.float(), k.float(), v.float(), 1024, doc_ids)
    assert rel_err(o, ref) < 2e-2
