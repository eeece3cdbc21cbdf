"""The token-sparse branch's block mask passes FlexAttention FLASH's captured-scalar check
under dynamic shapes.

FLASH inlines the mask_mod into a CuTe DSL template and refuses (torch 2.11, "NYI: ...
captures a dynamic scalar") a mask_mod whose captured values include a symbolic scalar not
read from a tensor's shape, or a 0-d CPU tensor. That refusal happens inside Inductor's CUDA
lowering, so here the CPU lowering is intercepted and torch's own check
(`has_unsupported_captured_scalars`) is run on the buffers the real compile hands it: the
routed count and the row length change between calls, as they do between steps."""

from __future__ import annotations

import functools

import pytest
import sympy
import torch

fa = pytest.importorskip("torch._inductor.kernel.flex.flex_attention")
from torch._inductor.kernel.flex.flex_flash_attention import has_unsupported_captured_scalars  # noqa: E402

import kernels.token_sparse.flex as tsf  # noqa: E402


class _Lowered(Exception):
    """Stops the CPU lowering once the check has run (the CPU kernel is not the point)."""


@pytest.fixture
def flash_checks(monkeypatch):
    """Every FlexAttention lowering records (FLASH would refuse, captured buffers), then
    stops; the token-sparse call is compiled with dynamic shapes as on CUDA."""
    seen = []

    def intercept(query, key, value, subgraph, block_mask, scale, kernel_options, sbuf, mbuf):
        env = fa.V.graph.sizevars.shape_env
        captured = [sorted(type(s).__name__ for sym in b.free_symbols
                           for s in env.var_to_sources.get(sym, []))
                    if isinstance(b, sympy.Expr) else tuple(b.get_size()) for b in (*sbuf, *mbuf)]
        seen.append((has_unsupported_captured_scalars(sbuf, mbuf), captured))
        raise _Lowered

    monkeypatch.setattr(fa, "lower_cpu", intercept)
    monkeypatch.setattr(tsf, "_compiled_flex", functools.cache(
        lambda dynamic: torch.compile(tsf._flex_call, dynamic=True, fullgraph=True)))
    monkeypatch.setattr(tsf, "has_fallen_back", lambda *a: False)
    monkeypatch.setattr(tsf, "record_fallback", lambda *a: None)
    return seen


def _call(T: int, R: int, doc_ids: torch.Tensor | None):
    B, H, Hk, D = 1, 4, 2, 32
    g = torch.Generator().manual_seed(T + R)
    q, k, v = (torch.randn(B, h, n, D, generator=g) for h, n in ((H, R), (Hk, T), (Hk, T)))
    slots = torch.sort(torch.randperm(T, generator=g)[:R]).values[None]
    valid = torch.ones(B, R, dtype=torch.bool)
    try:
        tsf.routed_query_attention_flex(q, k, v, slots, valid, doc_ids, D ** -0.5, flash=True)
    except Exception:  # noqa: BLE001  (_Lowered, wrapped by Inductor)
        pass


def test_token_sparse_mask_captures_only_tensors_and_their_sizes(flash_checks):
    # packed documents (starts derived once per forward) and a single document; routed
    # counts below and above one query block; two row lengths
    for T, R, docs in ((512, 200, True), (640, 90, False), (384, 300, True)):
        doc_ids = (torch.arange(T) * 3 // T)[None] if docs else None
        _call(T, R, doc_ids)
    assert flash_checks, "the compiled call never reached FlexAttention's lowering"
    for refused, captured in flash_checks:
        assert not refused, captured
        # the captured positions and document starts: 2-d tensors, their sizes symbols read
        # from tensor shapes only
        assert any(isinstance(c, tuple) and len(c) == 2 for c in captured)
        assert all(c == [] or set(c) == {"TensorPropertySource"} for c in captured if isinstance(c, list))


def test_capacity_layout_mask_captures_only_tensors_and_their_sizes(flash_checks):
    """The capacity layout (T rows, padding after each row's routed ones, the validity a
    device tensor of the block bounds): still nothing FLASH refuses, as the row length and
    the routed counts change."""
    from kernels.token_sparse.compact import routed_slots

    B, H, Hk, D = 2, 4, 2, 32
    for T, fraction, docs in ((512, 0.2, True), (640, 0.05, False)):
        g = torch.Generator().manual_seed(T)
        q, k, v = (torch.randn(B, h, T, D, generator=g) for h in (H, Hk, Hk))
        route = torch.rand(B, T, generator=g) < fraction
        route[1] = False  # a row routing nothing: all its query blocks are padding
        slots, valid = routed_slots(route, capacity=True)
        doc_ids = (torch.arange(T) * 3 // T)[None].expand(B, T) if docs else None
        try:
            tsf.routed_query_attention_flex(q, k, v, slots, valid, doc_ids, D ** -0.5, flash=True)
        except Exception:  # noqa: BLE001  (_Lowered, wrapped by Inductor)
            pass
    assert flash_checks, "the compiled call never reached FlexAttention's lowering"
    for refused, captured in flash_checks:
        assert not refused, captured
        assert all(c == [] or set(c) == {"TensorPropertySource"} for c in captured if isinstance(c, list))


def test_a_captured_host_scalar_is_what_flash_refuses(flash_checks, monkeypatch):
    """The check can fail: a mask_mod that captures a 0-d CPU tensor (a Python number
    turned into a tensor on the host) is refused, as on CUDA."""
    import kernels.flex_mask as fm

    real = fm.query_block_mask

    def with_host_scalar(q_pos, starts, window, block=fm.BLOCK, compiled=None, q_valid=None):
        bm = real(q_pos, starts, window, block, compiled, q_valid)
        limit = torch.tensor(starts.shape[1])  # on the host, 0-d
        inner = bm.mask_mod
        return type(bm)(
            seq_lengths=bm.seq_lengths, kv_num_blocks=bm.kv_num_blocks, kv_indices=bm.kv_indices,
            full_kv_num_blocks=bm.full_kv_num_blocks, full_kv_indices=bm.full_kv_indices,
            q_num_blocks=bm.q_num_blocks, q_indices=bm.q_indices,
            full_q_num_blocks=bm.full_q_num_blocks, full_q_indices=bm.full_q_indices,
            BLOCK_SIZE=bm.BLOCK_SIZE,
            mask_mod=lambda b, h, q, kv: inner(b, h, q, kv) & (kv < limit))

    monkeypatch.setattr(tsf, "query_block_mask", with_host_scalar)
    _call(512, 200, None)
    assert flash_checks and all(refused for refused, _ in flash_checks)
