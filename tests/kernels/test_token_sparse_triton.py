"""Triton token-sparse kernels against the dense fp64 reference: output and every gradient.

On CPU the kernels run in the Triton interpreter (fp32, small shapes); the `gpu` cases run
the same checks in bf16 at larger shapes. Output buffers are poisoned with NaN, so any row
a kernel forgets to write fails.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from attention_reference import (
    make_route,
    random_doc_ids,
    reference_with_grads,
    rel_err,
    run_with_grads,
    token_sparse_reference,
)

import kernels
from kernels.flash import config as flash_config
from kernels.flash.host import attention_bwd, attention_fwd
from kernels.flash.routing import build_routing

# (route kind, T, Hq, Hkv, D, documents per row)
CPU_CASES = [
    ("none", 63, 4, 1, 16, 1),
    ("all", 63, 8, 1, 64, 3),
    ("single", 500, 4, 4, 16, 2),
    ("random", 500, 8, 2, 32, 4),
    ("mixed", 130, 6, 2, 24, 3),
    ("random", 1000, 2, 1, 16, 6),
    ("random", 63, 4, 1, 128, 2),
]
# Every route kind x length; (Hq, G, D) and documents cycle so each G, D and doc setting
# meets every route kind.
_GPU_HEADS = [(4, 1, 64), (16, 4, 128), (32, 8, 128), (32, 8, 64)]
GPU_CASES = [
    (route, T, Hq, Hq // G, D, 1 + 3 * (i % 2))
    for i, (route, T, (Hq, G, D)) in enumerate(
        itertools.product(["none", "all", "single", "random", "mixed"], [63, 500, 1000], _GPU_HEADS)
    )
] + [("random", 4096, 12, 2, 128, 3), ("all", 3000, 28, 4, 128, 5)]


def _device_and_dtype(gpu: bool):
    return ("cuda", torch.bfloat16) if gpu else ("cpu", torch.float32)


def _inputs(B, Hq, Hkv, T, D, device, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    shapes = [(B, Hq, T, D), (B, Hkv, T, D), (B, Hkv, T, D), (B, Hq, T, D)]
    q, k, v, do = (torch.randn(s, generator=g).to(device, dtype) for s in shapes)
    return q, k, v, do, g


def _check_kernels(route_kind, T, Hq, Hkv, D, n_docs, gpu, seed=0, B=2):
    device, dtype = _device_and_dtype(gpu)
    tol = 2e-2 if gpu else 1e-5
    q, k, v, do, g = _inputs(B, Hq, Hkv, T, D, device, dtype, seed)
    route = make_route(B, T, route_kind, g).to(device)
    doc_ids = random_doc_ids(B, T, n_docs, g).to(device) if n_docs > 1 else None
    routing = build_routing(route, doc_ids)
    scale = D**-0.5
    nan = lambda t: torch.full_like(t, float("nan"))  # noqa: E731
    o, lse = attention_fwd(q, k, v, routing, T, scale, out=nan(q))
    dq, dk, dv = attention_bwd(
        q, k, v, o, lse, do, routing, T, scale, dq=nan(q), dk=nan(k), dv=nan(v)
    )
    ref = reference_with_grads(token_sparse_reference, q, k, v, do, route, doc_ids)
    for name, got, want in zip(("o", "dq", "dk", "dv"), (o, dq, dk, dv), ref):
        assert torch.isfinite(got).all(), f"{name}: unwritten or non-finite entries"
        err = rel_err(got, want, floor=1e-2 if gpu else 0.0)
        assert err < tol, f"{name}: relative error {err:.2e}"
    unrouted = ~route[:, None, :, None].expand_as(o)
    assert (o[unrouted] == 0).all() and (dq[unrouted] == 0).all()


@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "-".join(map(str, c)))
def test_kernels_match_reference_interpreted(case):
    _check_kernels(*case, gpu=False)


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "-".join(map(str, c)))
def test_kernels_match_reference_gpu(case):
    _check_kernels(*case, gpu=True)


def test_small_tiles_cross_many_block_boundaries(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("interpreter tile sizes")
    monkeypatch.setattr(
        flash_config, "INTERPRET_CONFIG", flash_config.LaunchConfig(16, 16, 4, 1, 2)
    )
    _check_kernels("random", 90, 4, 1, 16, 3, gpu=False, seed=3)


@pytest.mark.parametrize("gpu", [False, pytest.param(True, marks=pytest.mark.gpu)])
def test_public_op_autograd_and_determinism(gpu):
    device, dtype = _device_and_dtype(gpu)
    B, Hq, Hkv, T, D = (2, 8, 2, 300, 64) if gpu else (2, 4, 2, 70, 16)
    q, k, v, do, g = _inputs(B, Hq, Hkv, T, D, device, dtype, seed=7)
    route = make_route(B, T, "random", g).to(device)
    doc_ids = random_doc_ids(B, T, 3, g).to(device)
    # Non-contiguous q (the HF (B, T, H, D) layout transposed) must work as well.
    q = q.transpose(1, 2).contiguous().transpose(1, 2)
    first = run_with_grads(
        kernels.token_sparse_attention, q, k, v, do, route, doc_ids, backend="triton"
    )
    second = run_with_grads(
        kernels.token_sparse_attention, q, k, v, do, route, doc_ids, backend="triton"
    )
    ref = reference_with_grads(token_sparse_reference, q, k, v, do, route, doc_ids)
    for a, b, want in zip(first, second, ref):
        assert torch.equal(a, b), "backward is not bitwise deterministic"
        assert rel_err(a, want, floor=1e-2 if gpu else 0.0) < (2e-2 if gpu else 1e-5)
    assert first[0].dtype == dtype


# GPU: 10 draws (each new head-dim/group pair compiles three kernels; 20 took too long
# beside the rest of the GPU suite).
@pytest.mark.parametrize("n_draws,gpu", [(3, False), pytest.param(10, True, marks=pytest.mark.gpu)])
def test_fuzz_random_shapes_and_masks(n_draws, gpu):
    g = torch.Generator().manual_seed(1234)
    pick = lambda xs: xs[int(torch.randint(len(xs), (1,), generator=g))]  # noqa: E731
    for draw in range(n_draws):
        T = int(torch.randint(1, 700 if gpu else 120, (1,), generator=g))
        G = pick([1, 2, 3, 4, 8])
        Hkv = pick([1, 2])
        D = pick([16, 40, 64, 128] if gpu else [16, 40])
        B = pick([1, 2, 3])
        density = float(torch.rand(1, generator=g))
        route = torch.rand(B, T, generator=g) < density
        n_docs = min(T, pick([1, 2, 5]))
        device, dtype = _device_and_dtype(gpu)
        q, k, v, do, _ = _inputs(B, G * Hkv, Hkv, T, D, device, dtype, seed=draw)
        doc_ids = random_doc_ids(B, T, n_docs, g).to(device) if n_docs > 1 else None
        got = run_with_grads(
            kernels.token_sparse_attention, q, k, v, do, route.to(device), doc_ids, backend="triton"
        )
        ref = reference_with_grads(token_sparse_reference, q, k, v, do, route, doc_ids)
        for name, a, want in zip(("o", "dq", "dk", "dv"), got, ref):
            err = rel_err(a, want, floor=1e-2 if gpu else 0.0)
            assert torch.isfinite(a).all() and err < (2e-2 if gpu else 1e-5), (
                f"draw {draw} (B={B} T={T} G={G} Hkv={Hkv} D={D} docs={n_docs}): {name} {err:.2e}"
            )


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_empty_sequence(backend):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q = torch.randn(2, 4, 0, 16, device=device, requires_grad=True)
    k = torch.randn(2, 2, 0, 16, device=device, requires_grad=True)
    route = torch.zeros(2, 0, dtype=torch.bool, device=device)
    o = kernels.token_sparse_attention(q, k, k, route, backend=backend)
    assert o.shape == q.shape
    o.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape
