"""Host-side forward and backward: allocation, launch grids, kernel arguments."""

from __future__ import annotations

import torch
import triton
from triton.tools.tensor_descriptor import TensorDescriptor

from .backward import attn_bwd_dkdv_kernel, attn_bwd_dq_kernel
from .config import get_config, interpreting, packed_heads, run_with_fallback
from .forward import attn_fwd_kernel
from .routing import Routing

LOG2E = 1.4426950408889634


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _on_gpu(t: torch.Tensor) -> bool:
    # One place that decides "compiled for a GPU" (kernels/tuning/resources.py compiles the
    # GPU kernels from CPU tensors by overriding this and _tma_capable).
    return t.is_cuda


def _tma_capable(device: torch.device) -> bool:
    if interpreting():
        return True
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def _descriptor(t: torch.Tensor, block_shape: list[int]) -> TensorDescriptor | None:
    """A TMA descriptor over a 4-D (B, H, T, D) view, or None where the copy engine can't
    address it (base or a row stride not 16-byte aligned, or no TMA on this device)."""
    es = t.element_size()
    if not _tma_capable(t.device) or t.data_ptr() % 16 or t.stride(-1) != 1:
        return None
    if any((st * es) % 16 for st in t.stride()[:-1]):
        return None
    return TensorDescriptor(t, list(t.shape), list(t.stride()), block_shape)


def _kv_args(k, v, cfg, block_d):
    """K and V kernel arguments: descriptors if the config asks and both qualify."""
    if cfg.kv_desc:
        block = [1, 1, cfg.block_n, block_d]
        kd, vd = _descriptor(k, block), _descriptor(v, block)
        if kd is not None and vd is not None:
            return kd, vd, True
    return k, v, False


def _meta(cfg, G, gp, D, block_d, upcast) -> dict:
    """Compile-time arguments every kernel takes, from the launch config."""
    return dict(
        G=G,
        GP=gp,
        D=D,
        BLOCK_D=block_d,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        UPCAST=upcast,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )


def _common(q: torch.Tensor, k: torch.Tensor):
    B, Hq, T, D = q.shape
    Hkv = k.shape[1]
    block_d = max(16, triton.next_power_of_2(D))
    on_gpu = _on_gpu(q)
    upcast = (not on_gpu) and q.dtype != torch.float32
    return B, Hq, Hkv, T, D, block_d, on_gpu, upcast


def attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    routing: Routing,
    window: int,
    scale: float,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns `o (B, Hq, T, D)` (zero at unrouted rows) and `lse (B, Hq, T)` fp32 in log2
    units, indexed by compacted query (valid for the first `count` entries). k/v may be
    longer than q (queries = the last T key positions; `routing` built with the keys'
    length)."""
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    B, Hq, Hkv, T, D, block_d, on_gpu, upcast = _common(q, k)
    G = Hq // Hkv
    o = torch.empty_like(q) if out is None else out
    lse = torch.empty(B, Hq, T, dtype=torch.float32, device=q.device)
    if q.numel() == 0:
        return o, lse
    run_with_fallback(
        "fwd",
        block_d,
        on_gpu,
        q.device,
        lambda cfg: _launch_fwd(cfg, q, k, v, o, lse, routing, window, scale, G, block_d, upcast),
    )
    return o, lse


def _launch_fwd(cfg, q, k, v, o, lse, routing, window, scale, G, block_d, upcast):
    B, Hq, T, D = q.shape
    Hkv, TK = k.shape[1], k.shape[2]
    gp = packed_heads(G, cfg.block_m, cfg.max_packed_heads)
    grid = (B * Hkv * (G // gp) * triton.cdiv(T, cfg.block_m // gp),)
    k_arg, v_arg, kv_desc = _kv_args(k, v, cfg, block_d)
    attn_fwd_kernel[grid](
        q,
        k_arg,
        v_arg,
        o,
        lse,
        routing.order,
        routing.count,
        routing.start,
        *q.stride()[:3],
        *k.stride()[:3],
        *v.stride()[:3],
        *o.stride()[:3],
        T,
        TK,
        TK - T,
        Hq,
        Hkv,
        min(window, TK),
        scale * LOG2E,
        **_meta(cfg, G, gp, D, block_d, upcast),
        KV_DESC=kv_desc,
    )


def attention_bwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    do: torch.Tensor,
    routing: Routing,
    window: int,
    scale: float,
    dq: torch.Tensor | None = None,
    dk: torch.Tensor | None = None,
    dv: torch.Tensor | None = None,
    passes: tuple[str, ...] = ("dq", "dkdv"),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq (zero at unrouted rows), dk and dv for every key; bitwise deterministic unless
    the dkdv config sets `atomic_dq`.

    `passes` runs a subset of the kernels (for timing them apart); the dkdv pass reads
    the `delta` that the dq pass writes. With `atomic_dq` the dk/dv pass also computes dq
    into fp32 rows by atomic adds, between a dq-pass prologue (delta, zeroed rows) and
    epilogue (scale and scatter): "dq" times those two."""
    q, k, v, o, do = (_last_dim_contiguous(t) for t in (q, k, v, o, do))
    B, Hq, Hkv, T, D, block_d, on_gpu, upcast = _common(q, k)
    window = min(window, T)
    dq = torch.empty_like(q) if dq is None else dq
    dk = torch.empty_like(k) if dk is None else dk
    dv = torch.empty_like(v) if dv is None else dv
    delta = torch.empty(B, Hq, T, dtype=torch.float32, device=q.device)
    if q.numel() == 0:
        return dq, dk.zero_(), dv.zero_()
    # The dkdv pass may stream compacted copies of q and dO that the dq pass writes:
    # (B, Hq, T, D) each, since the routed count is not known on the host.
    dkdv_cfg = get_config("dkdv", block_d, on_gpu)
    compact, atomic = dkdv_cfg.compact, dkdv_cfg.atomic_dq
    qc = torch.empty(B, Hq, T, D, dtype=q.dtype, device=q.device) if compact else q
    doc = torch.empty(B, Hq, T, D, dtype=do.dtype, device=q.device) if compact else do
    # fp32 dq rows by compacted index, zeroed by the dq prologue (rows < T: no host sync);
    # without atomic_dq the kernels never touch it, and any fp32 tensor stands in.
    dq_acc = torch.empty(B, Hq, T, D, dtype=torch.float32, device=q.device) if atomic else delta
    dq_args = (
        q,
        k,
        v,
        o,
        do,
        dq,
        qc,
        doc,
        dq_acc,
        lse,
        delta,
        routing,
        window,
        scale,
        block_d,
        upcast,
        compact,
    )

    def run(pass_name, launch, *args):
        run_with_fallback(pass_name, block_d, on_gpu, q.device, lambda cfg: launch(cfg, *args))

    if "dq" in passes:
        run("dq", _launch_dq, *dq_args, 1 if atomic else 0)
    if "dkdv" in passes:
        run(
            "dkdv",
            _launch_dkdv,
            qc if compact else q,
            k,
            v,
            doc if compact else do,
            dk,
            dv,
            dq_acc,
            lse,
            delta,
            routing,
            window,
            scale,
            block_d,
            upcast,
            compact,
            atomic,
        )
    if atomic and "dq" in passes:
        run("dq", _launch_dq, *dq_args, 2)
    return dq, dk, dv


def _launch_dq(
    cfg,
    q,
    k,
    v,
    o,
    do,
    dq,
    qc,
    doc,
    dq_acc,
    lse,
    delta,
    routing,
    window,
    scale,
    block_d,
    upcast,
    compact,
    mode,
):
    B, Hq, T, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    gp = packed_heads(G, cfg.block_m, cfg.max_packed_heads)
    grid = (B * Hkv * (G // gp) * triton.cdiv(T, cfg.block_m // gp),)
    k_arg, v_arg, kv_desc = _kv_args(k, v, cfg, block_d)
    attn_bwd_dq_kernel[grid](
        q,
        k_arg,
        v_arg,
        o,
        do,
        dq,
        qc,
        doc,
        dq_acc,
        lse,
        delta,
        routing.order,
        routing.count,
        routing.start,
        *q.stride()[:3],
        *k.stride()[:3],
        *v.stride()[:3],
        *o.stride()[:3],
        *do.stride()[:3],
        *dq.stride()[:3],
        T,
        Hq,
        Hkv,
        window,
        scale * LOG2E,
        scale,
        **_meta(cfg, G, gp, D, block_d, upcast),
        KV_DESC=kv_desc,
        WRITE_COMPACT=compact,
        MODE=mode,
    )


def _launch_dkdv(
    cfg,
    q,
    k,
    v,
    do,
    dk,
    dv,
    dq_acc,
    lse,
    delta,
    routing,
    window,
    scale,
    block_d,
    upcast,
    compact,
    atomic,
):
    B, Hq, T, D = q.shape
    Hkv = k.shape[1]
    G = Hq // Hkv
    gp = packed_heads(G, cfg.block_m, cfg.max_packed_heads)
    grid = (B * Hkv * triton.cdiv(T, cfg.block_n),)
    q_arg, do_arg, compact_desc = q, do, False
    if compact and cfg.compact_desc:
        block = [1, gp, cfg.block_m // gp, block_d]
        qd, dod = _descriptor(q, block), _descriptor(do, block)
        if qd is not None and dod is not None:
            q_arg, do_arg, compact_desc = qd, dod, True
    k_arg, v_arg, kv_desc = _kv_args(k, v, cfg, block_d)
    attn_bwd_dkdv_kernel[grid](
        q_arg,
        k_arg,
        v_arg,
        do_arg,
        dk,
        dv,
        dq_acc,
        lse,
        delta,
        routing.order,
        routing.cum,
        routing.start,
        routing.end,
        *q.stride()[:3],
        *k.stride()[:3],
        *v.stride()[:3],
        *do.stride()[:3],
        *dk.stride()[:3],
        *dv.stride()[:3],
        T,
        Hq,
        Hkv,
        window,
        scale * LOG2E,
        scale,
        **_meta(cfg, G, gp, D, block_d, upcast),
        COMPACT=compact,
        COMPACT_DESC=compact_desc,
        KV_RELOAD=cfg.kv_reload,
        KV_DESC=kv_desc,
        ATOMIC_DQ=atomic,
    )


class RoutedAttentionFunction(torch.autograd.Function):
    """Autograd wrapper of the compacted-query attention kernels."""

    @staticmethod
    def forward(ctx, q, k, v, routing: Routing, window: int, scale: float):
        o, lse = attention_fwd(q, k, v, routing, window, scale)
        ctx.save_for_backward(q, k, v, o, lse, *routing)
        ctx.window, ctx.scale = window, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, *routing = ctx.saved_tensors
        if q.shape[2] != k.shape[2]:
            raise RuntimeError("routed attention: no backward for queries shorter than the keys")
        dq, dk, dv = attention_bwd(q, k, v, o, lse, do, Routing(*routing), ctx.window, ctx.scale)
        return dq, dk, dv, None, None, None


# Dynamo would trace into the kernel launches; a graph break keeps compiled models correct.
@torch.compiler.disable
def routed_attention(q, k, v, routing: Routing, window: int | None, scale: float) -> torch.Tensor:
    window = k.shape[2] if window is None else window
    return RoutedAttentionFunction.apply(q, k, v, routing, window, scale)
