"""Sliding-window GPU paths (our Triton kernels, FlexAttention) against the dense reference."""

from __future__ import annotations

import itertools

import pytest
import torch
from attention_reference import (
    allowed_mask,
    check_block_mask_cover,
    random_doc_ids,
    reference_with_grads,
    rel_err,
    run_with_grads,
    sliding_window_reference,
)

import kernels
from kernels.flash.host import attention_bwd, attention_fwd
from kernels.flash.routing import build_routing
from kernels.sliding_window.flex import sliding_window_block_mask
from kernels.utils import doc_start_positions

CPU_CASES = [(63, 4, 1, 16, 1, 7), (200, 4, 2, 32, 3, 50), (150, 6, 2, 24, 4, 1000)]
GPU_CASES = [
    (T, Hq, Hq // G, D, 1 + 3 * (i % 2), w)
    for i, (T, (Hq, G), D, w) in enumerate(
        itertools.product([63, 500, 1000], [(4, 1), (32, 8)], [64, 128], [1, 64, 4095])
    )
]


def _inputs(B, Hq, Hkv, T, D, device, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    shapes = [(B, Hq, T, D), (B, Hkv, T, D), (B, Hkv, T, D), (B, Hq, T, D)]
    return [torch.randn(s, generator=g).to(device, dtype) for s in shapes] + [g]


def _check_triton(T, Hq, Hkv, D, n_docs, window, gpu):
    device, dtype = ("cuda", torch.bfloat16) if gpu else ("cpu", torch.float32)
    B = 2
    q, k, v, do, g = _inputs(B, Hq, Hkv, T, D, device, dtype, seed=T + window)
    doc_ids = random_doc_ids(B, T, n_docs, g).to(device) if n_docs > 1 else None
    routing = build_routing(torch.ones(B, T, dtype=torch.bool, device=device), doc_ids)
    nan = lambda t: torch.full_like(t, float("nan"))  # noqa: E731
    o, lse = attention_fwd(q, k, v, routing, window, D**-0.5, out=nan(q))
    grads = attention_bwd(
        q, k, v, o, lse, do, routing, window, D**-0.5, dq=nan(q), dk=nan(k), dv=nan(v)
    )
    ref = reference_with_grads(sliding_window_reference, q, k, v, do, window, doc_ids)
    for name, got, want in zip(("o", "dq", "dk", "dv"), (o, *grads), ref):
        assert torch.isfinite(got).all(), f"{name}: unwritten or non-finite entries"
        err = rel_err(got, want, floor=1e-2 if gpu else 0.0)
        assert err < (2e-2 if gpu else 1e-5), f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "-".join(map(str, c)))
def test_triton_window_interpreted(case):
    _check_triton(*case, gpu=False)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "-".join(map(str, c)))
def test_triton_window_gpu(case):
    _check_triton(*case, gpu=True)


# FlexAttention's compiled kernels reject GQA at sequences shorter than one block (T=63).
@pytest.mark.gpu
@pytest.mark.parametrize(
    "case", [c for c in GPU_CASES if c[0] >= 500][::6], ids=lambda c: "-".join(map(str, c))
)
def test_flex_window_gpu(case):
    from kernels.sliding_window.flex import sliding_window_attention_flex

    T, Hq, Hkv, D, n_docs, window = case
    B = 2
    q, k, v, do, g = _inputs(B, Hq, Hkv, T, D, "cuda", torch.bfloat16, seed=T)
    doc_ids = random_doc_ids(B, T, n_docs, g).cuda() if n_docs > 1 else None
    fn = lambda q, k, v: sliding_window_attention_flex(q, k, v, window, doc_ids, D**-0.5)  # noqa: E731
    got = run_with_grads(fn, q, k, v, do)
    ref = reference_with_grads(sliding_window_reference, q, k, v, do, window, doc_ids)
    for name, a, want in zip(("o", "dq", "dk", "dv"), got, ref):
        assert rel_err(a, want, floor=1e-2) < 2e-2, name


def test_flex_window_compiled_on_cpu():
    """The FlexAttention path compiled (inductor's CPU backend, fullgraph) with GQA,
    documents and a window; forward only (FlexAttention has no CPU backward)."""
    if torch.cuda.is_available():
        pytest.skip("the gpu cases cover it")
    from kernels.sliding_window.flex import sliding_window_attention_flex

    T, Hq, Hkv, D, window = 300, 4, 2, 16, 50
    q, k, v, _, g = _inputs(2, Hq, Hkv, T, D, "cpu", torch.float32, seed=11)
    doc_ids = random_doc_ids(2, T, 3, g)
    with torch.no_grad():
        got = sliding_window_attention_flex(q, k, v, window, doc_ids, D**-0.5)
        want = sliding_window_reference(q, k, v, window, doc_ids)
    assert rel_err(got, want) < 1e-4


@pytest.mark.gpu
def test_public_op_gpu_default_path():
    q, k, v, do, g = _inputs(2, 8, 2, 777, 128, "cuda", torch.bfloat16, seed=5)
    doc_ids = random_doc_ids(2, 777, 3, g).cuda()
    got = run_with_grads(kernels.sliding_window_attention, q, k, v, do, 100, doc_ids)
    ref = reference_with_grads(sliding_window_reference, q, k, v, do, 100, doc_ids)
    for a, want in zip(got, ref):
        assert rel_err(a, want, floor=1e-2) < 2e-2


@pytest.mark.parametrize(
    "T,window,n_docs,block",
    [(1000, 100, 4, 64), (700, 300, 1, 64), (513, 1, 3, 32), (1024, 2000, 6, 128)],
)
def test_flex_block_mask_is_exact_at_block_level(T, window, n_docs, block):
    """Skipped blocks hold no visible pair, full blocks only visible pairs."""
    g = torch.Generator().manual_seed(T)
    doc_ids = random_doc_ids(2, T, n_docs, g)
    bm = sliding_window_block_mask(doc_start_positions(doc_ids), window, block=block)
    nb = (T + block - 1) // block
    visible = allowed_mask(T, doc_ids, 2, window)
    partial, full, any_vis = check_block_mask_cover(bm, visible, block)
    assert (full | partial).sum() <= any_vis.sum() + 2 * nb * 2  # no gross over-coverage
