"""Every attention backend against the dense fp64 reference, output and every gradient.

The compacted-query op (`routed_query_attention`: queries of routed tokens only, as the
layer projects them) and the positional ops run through `torch`, `triton` (the
interpreter on CPU), `flex` and `fa4` (FlashAttention-4; GPU only, skipped where the
package is missing). The FlexAttention block masks for queries at given positions are
checked at block and token level without compiling anything.
"""

from __future__ import annotations

import pytest
import torch
from attention_reference import (
    allowed_mask,
    check_block_mask_cover,
    make_route,
    random_doc_ids,
    reference_with_grads,
    rel_err,
    run_with_grads,
    sliding_window_reference,
    token_sparse_reference,
)

import kernels
from kernels.backends import fa4_suits, resolve
from kernels.flex_mask import query_block_mask
from kernels.token_sparse.compact import routed_query_attention, routed_slots
from kernels.utils import doc_start_positions

# (route kind, T, Hq, Hkv, D, documents per row); "mixed" leaves the last row empty, so
# every other row's padding is exercised.
CPU_CASES = [
    ("mixed", 63, 4, 2, 16, 3),
    ("random", 130, 6, 2, 24, 1),
    ("single", 77, 4, 1, 16, 2),
    ("none", 33, 4, 2, 16, 1),
    ("all", 45, 2, 2, 16, 4),
]
GPU_CASES = [
    ("mixed", 1000, 32, 8, 128, 3),
    ("random", 777, 16, 4, 64, 1),
    ("random", 2048, 28, 4, 128, 5),
    ("all", 500, 8, 2, 128, 2),
    ("single", 300, 8, 2, 64, 2),  # one or two routed rows: fewer than a flex block
]
GPU_BACKENDS = ["torch", "triton", "flex", "fa4"]


def _inputs(case, device, dtype, seed=0, B=2):
    kind, T, Hq, Hkv, D, n_docs = case
    g = torch.Generator().manual_seed(seed + T)
    shapes = [(B, Hq, T, D), (B, Hkv, T, D), (B, Hkv, T, D), (B, Hq, T, D)]
    q, k, v, do = (torch.randn(s, generator=g).to(device, dtype) for s in shapes)
    route = make_route(B, T, kind, g).to(device)
    doc_ids = random_doc_ids(B, T, n_docs, g).to(device) if n_docs > 1 else None
    return q, k, v, do, route, doc_ids


def _rows(x, slots):
    B, H, _, D = x.shape
    return x.gather(2, slots[:, None, :, None].expand(B, H, slots.shape[1], D))


def _compact_reference(q_c, k, v, route, doc_ids, slots, valid):
    """The dense reference at the rows' positions, gathered; padding rows zero."""
    B, H, R, D = q_c.shape
    full = q_c.new_zeros(B, H, k.shape[2], D).scatter(
        2, slots[:, None, :, None].expand(B, H, R, D), q_c
    )
    o = token_sparse_reference(full, k, v, route, doc_ids)
    return _rows(o, slots) * valid[:, None, :, None]


def _skip_unavailable(backend, q):
    if backend == "fa4" and not fa4_suits(q):
        pytest.skip("flash-attn-4 not installed or not a Hopper/Blackwell GPU")


def _assert_flash_ran():
    """The FLASH backend falls back to FlexAttention's default one (recorded in
    kernels/fallbacks.py) rather than crash a run; a test of the fa4 path must see that it
    did not."""
    from kernels.fallbacks import fallbacks

    assert not fallbacks(), f"a backend fell back: {fallbacks()}"


def _check_compact(case, backend, gpu, capacity=False):
    device, dtype = ("cuda", torch.bfloat16) if gpu else ("cpu", torch.float32)
    q, k, v, do, route, doc_ids = _inputs(case, device, dtype)
    _skip_unavailable(backend, q)
    slots, valid = routed_slots(route, capacity=capacity)
    assert slots.shape[1] == (case[1] if capacity else int(route.sum(1).max()))
    q_c, do_c = _rows(q, slots), _rows(do, slots)
    got = run_with_grads(routed_query_attention, q_c, k, v, do_c, route, doc_ids, backend=backend)
    want = reference_with_grads(_compact_reference, q_c, k, v, do_c, route, doc_ids, slots, valid)
    for name, a, b in zip(("o", "dq", "dk", "dv"), got, want):
        assert torch.isfinite(a).all(), name
        err = rel_err(a, b, floor=1e-2 if gpu else 0.0)
        assert err < (2e-2 if gpu else 1e-5), f"{name}: relative error {err:.2e}"
    # Padding rows: exact zeros out, zero gradient in.
    pad = ~valid[:, None, :, None].expand_as(got[0])
    assert not got[0][pad].any() and not got[1][pad].any()
    if resolve(backend, q) == "fa4":
        _assert_flash_ran()


@pytest.mark.parametrize("layout", ["count", "capacity"])
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_compact_op_cpu(case, backend, layout):
    """Both layouts: R rows (`count`) or all T (`capacity`: padding = the unrouted rows)."""
    _check_compact(case, backend, gpu=False, capacity=layout == "capacity")


def test_compact_op_rejects_wrong_row_count():
    q, k, v, _, route, doc_ids = _inputs(CPU_CASES[0], "cpu", torch.float32)
    R = int(route.sum(1).max())
    with pytest.raises(ValueError, match="compacted rows"):
        routed_query_attention(q[:, :, : R + 1], k, v, route, doc_ids)


def test_resolve():
    q = torch.zeros(1, 2, 3, 16)
    assert resolve("auto", q) == "torch"  # CPU: the reference
    assert resolve("flex", q) == "flex"
    with pytest.raises(ValueError, match="backend"):
        resolve("cudnn", q)
    with pytest.raises(ValueError, match="fa4"):
        resolve("fa4", q)  # never on CPU tensors


def test_auto_picks_fa4_for_both_branches_where_it_suits(monkeypatch):
    """Where FlashAttention-4 suits the input (Hopper / Blackwell, installed), `auto` runs it
    for the window and for the token-sparse branch up to head dim 128 (what the token-sparse
    FLASH path's GPU tests cover); larger head dims keep the other backends."""
    import kernels.backends as backends

    monkeypatch.setattr(backends, "fa4_suits", lambda q: True)
    for D in (64, 128):
        q = torch.zeros(1, 2, 3, D)
        assert resolve("auto", q) == "fa4"
        assert resolve("auto", q, token_sparse=True) == "fa4"
    q = torch.zeros(1, 2, 3, 256)
    assert resolve("auto", q) == "fa4"
    assert resolve("auto", q, token_sparse=True) == "torch"  # CPU tensor: the reference
    monkeypatch.setattr(backends, "fa4_suits", lambda q: False)
    assert resolve("auto", torch.zeros(1, 2, 3, 64), token_sparse=True) == "torch"


# ---------------------------------------------------------------- FlexAttention masks
def _mask_cases():
    for T, n_docs, fraction, block in [(1000, 4, 0.3, 64), (513, 1, 0.05, 32), (700, 6, 1.0, 128)]:
        yield T, n_docs, fraction, block


@pytest.mark.parametrize("window", [None, 50])
@pytest.mark.parametrize("T,n_docs,fraction,block", list(_mask_cases()))
def test_query_block_mask_for_compacted_queries(T, n_docs, fraction, block, window):
    """Queries at the routed positions (compacted, ascending, padded with T - 1 as the
    flex path pads): skipped blocks hold no visible pair, full blocks only visible pairs,
    and the mask_mod is the visibility rule token by token."""
    B = 2
    g = torch.Generator().manual_seed(T)
    doc_ids = random_doc_ids(B, T, n_docs, g)
    route = torch.rand(B, T, generator=g) < fraction
    route[:, 0] = True
    slots, valid = routed_slots(route)
    q_pos = torch.where(valid, slots, T - 1)
    R = q_pos.shape[1]
    bm = query_block_mask(q_pos.int(), doc_start_positions(doc_ids), window, block=block)
    visible = allowed_mask(T, doc_ids, B, window).gather(1, q_pos[:, :, None].expand(B, R, T))

    qi = torch.arange(R)[None, :, None]
    ki = torch.arange(T)[None, None, :]
    bi = torch.arange(B)[:, None, None]
    assert torch.equal(bm.mask_mod(bi, 0, qi, ki), visible)

    _, full, _ = check_block_mask_cover(bm, visible, block)
    if window is None and n_docs == 1 and fraction > 0.1:
        assert full.any(), "no full block: the mask is all partial"


# ---------------------------------------------------------------- GPU, every backend
@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["count", "capacity"])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "-".join(map(str, c)))
def test_compact_op_gpu(case, backend, layout):
    """`capacity`: query blocks of padding rows only have no key block (FlexAttention /
    FLASH then write zeros for them and never visit them in the backward)."""
    _check_compact(case, backend, gpu=True, capacity=layout == "capacity")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS + ["auto"])
@pytest.mark.parametrize("case", GPU_CASES[:3], ids=lambda c: "-".join(map(str, c)))
def test_token_sparse_op_gpu(case, backend):
    q, k, v, do, route, doc_ids = _inputs(case, "cuda", torch.bfloat16, seed=1)
    _skip_unavailable(backend, q)
    got = run_with_grads(kernels.token_sparse_attention, q, k, v, do, route, doc_ids, backend=backend)
    want = reference_with_grads(token_sparse_reference, q, k, v, do, route, doc_ids)
    for name, a, b in zip(("o", "dq", "dk", "dv"), got, want):
        assert rel_err(a, b, floor=1e-2) < 2e-2, name
    if resolve(backend, q) == "fa4":
        _assert_flash_ran()


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS + ["auto"])
@pytest.mark.parametrize(
    "T,Hq,Hkv,D,n_docs,window",
    [(1000, 32, 8, 128, 3, 64), (777, 16, 4, 64, 1, 4095), (2048, 28, 4, 128, 5, 1000)],
)
def test_sliding_window_op_gpu(T, Hq, Hkv, D, n_docs, window, backend):
    q, k, v, do, _, doc_ids = _inputs(("all", T, Hq, Hkv, D, n_docs), "cuda", torch.bfloat16, seed=2)
    _skip_unavailable(backend, q)
    got = run_with_grads(kernels.sliding_window_attention, q, k, v, do, window, doc_ids, backend=backend)
    want = reference_with_grads(sliding_window_reference, q, k, v, do, window, doc_ids)
    for name, a, b in zip(("o", "dq", "dk", "dv"), got, want):
        assert rel_err(a, b, floor=1e-2) < 2e-2, name


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["flex", "fa4"])
def test_routed_count_changes_without_recompiling(backend):
    """One compile serves every routed count: after the first call, a recompilation of
    the FlexAttention path is an error."""
    import torch._dynamo

    case = ("random", 2048, 16, 4, 128, 3)
    q, k, v, do, _, doc_ids = _inputs(case, "cuda", torch.bfloat16, seed=3)
    _skip_unavailable(backend, q)

    def step(fraction, seed):
        g = torch.Generator().manual_seed(seed)
        route = (torch.rand(2, case[1], generator=g) < fraction).cuda()
        slots, _ = routed_slots(route)
        q_c = _rows(q, slots).requires_grad_(True)
        o = routed_query_attention(q_c, k, v, route, doc_ids, backend=backend)
        o.backward(_rows(do, slots))
        return slots.shape[1]

    step(0.2, 0)
    counts = set()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i, fraction in enumerate((0.1, 0.35, 0.5)):
            counts.add(step(fraction, i + 1))
    assert len(counts) == 3
    if backend == "fa4":
        _assert_flash_ran()


@pytest.mark.parametrize("module", ["token_sparse", "sliding_window"])
def test_flex_compile_raises_the_recompile_limit(module):
    """Each compiled FlexAttention call has one dynamo entry per shape family; past dynamo's
    default limit of 8 a fullgraph call fails hard (seen in a GPU test session), so making
    the compiled function raises the limit, and never lowers a user's higher one."""
    import importlib

    import torch._dynamo.config as dynamo_config

    from kernels.utils import FLEX_RECOMPILE_LIMIT

    flex = importlib.import_module(f"kernels.{module}.flex")
    args = (False,) if module == "token_sparse" else ()

    def limit_after_compiling(start):
        with dynamo_config.patch(recompile_limit=start):
            flex._compiled_flex.cache_clear()
            flex._compiled_flex(*args)
            flex._compiled_flex.cache_clear()
            return dynamo_config.recompile_limit

    assert limit_after_compiling(8) == FLEX_RECOMPILE_LIMIT > 8
    assert limit_after_compiling(500) == 500
