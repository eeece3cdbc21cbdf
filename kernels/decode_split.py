"""Split-KV ("flash-decoding") attention of a few queries against fixed-size key buffers.

The decoding step of a static cache (l2a/static_cache.py) attends from ``Tq <= 16`` queries
per row to every row of its buffers (a ring for the local window, ``max_cache_len`` rows for
the global branch), with a boolean ``visible (B, Tq, Tk)`` saying which keys each query
sees. At batch 1 and 128K keys a kernel with one program per (row, KV head) runs ``B * Hkv``
programs over the whole cache and leaves most of the GPU idle; here the keys are cut into
``S`` splits and

- stage 1, one program per (row, KV head, split): all ``G * Tq`` query rows of the KV group
  (the ``G`` query heads sharing it, so each key tile is read once) against the split's
  keys, an online softmax in fp32 -> per query row the running max ``m`` (log2 domain), the
  sum ``l`` and the unnormalised output ``acc``;
- stage 2, one program per (row, query head, query): the ``S`` partials combined.

``S`` depends on the shapes (and the device's SM count) only, the grid is fixed and the
kernels read no value on the host: a CUDA graph captures the call.

Visibility is read blockwise from ``visible`` rather than rebuilt from a compact form: the
static cache's masks compare document ids per key (packed prompts, padding segments), so
an exact compact form would read an int32 id per key, four times the mask's one byte. Per
program and key that is ``Tq`` bytes of mask against ``4 * D`` bytes of K and V (0.2% at
``Tq = 1``, ``D = 128``), and keys no query row sees are not loaded (predicated loads).

``route (B, Tq)`` (bool, on the device): a program whose query rows are all unrouted runs
its key loop zero times (it reads no key, value or mask), and rows of unrouted queries are
exactly zero (stage 2 does not read their partials).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    """Triton's CPU interpreter (TRITON_INTERPRET=1, the tests' way to run the kernels)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


SPLIT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Head dims up to 128 (padded to a power of two, at least 16 for the matmuls).
SPLIT_MAX_HEAD_DIM = 128
SPLIT_MAX_QUERIES = 16


@dataclass(frozen=True)
class SplitConfig:
    block_n: int  # keys per tile
    num_warps: int
    num_stages: int
    # Splits per (row, KV head) aim at this many stage-1 programs per SM ...
    programs_per_sm: int
    # ... with at least this many keys in a split (fewer make the partials' traffic and the
    # combine matter against the keys read).
    min_keys_per_split: int


# Not tuned by measurement yet: 64-key tiles, 3 stages in flight (two programs per SM fit
# their K/V tiles in shared memory at D = 128).
GPU_SPLIT_CONFIG = SplitConfig(block_n=64, num_warps=4, num_stages=3, programs_per_sm=2, min_keys_per_split=256)
# The interpreter: small tiles and splits, so that small test shapes cross tile and split
# boundaries.
INTERPRET_SPLIT_CONFIG = SplitConfig(block_n=16, num_warps=1, num_stages=1, programs_per_sm=1, min_keys_per_split=16)
INTERPRET_SM_COUNT = 4


def _block_d(D: int) -> int:
    return max(16, triton.next_power_of_2(D))


def split_config(on_gpu: bool) -> SplitConfig:
    return GPU_SPLIT_CONFIG if on_gpu else INTERPRET_SPLIT_CONFIG


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def num_splits(batch: int, kv_heads: int, keys: int, cfg: SplitConfig, sm_count: int) -> int:
    """How many key splits a (row, KV head) gets: enough stage-1 programs to fill the GPU
    (``programs_per_sm`` per SM), no split shorter than ``min_keys_per_split`` keys, none
    empty. A function of the shapes and the device only (fixed grid: CUDA graphs)."""
    tiles = triton.cdiv(keys, cfg.block_n)
    want = triton.cdiv(cfg.programs_per_sm * sm_count, batch * kv_heads)
    most = max(1, keys // cfg.min_keys_per_split)
    splits = max(1, min(want, most, tiles))
    return split_layout(keys, splits, cfg.block_n)[1]


def split_layout(keys: int, splits: int, block_n: int) -> tuple[int, int]:
    """``(keys per split, splits)`` for about ``splits`` splits: splits start on tile
    boundaries, the last one may be shorter, none is empty."""
    per = triton.cdiv(triton.cdiv(keys, splits), block_n) * block_n
    return per, triton.cdiv(keys, per)


def split_kv_unsupported(q, k, v, visible, route) -> str | None:
    """Why the split kernel cannot take this call (None: it can)."""
    B, Hq, tq, D = q.shape
    if k.dim() != 4 or v.shape != k.shape or k.shape[0] != B or k.shape[3] != D:
        return f"k/v must be (B, Hkv, Tk, {D}) like q's batch and head dim, got {tuple(k.shape)} / {tuple(v.shape)}"
    if q.dtype not in SPLIT_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"needs fp16/bf16/fp32 q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
    if D > SPLIT_MAX_HEAD_DIM:
        return f"head dim {D} (at most {SPLIT_MAX_HEAD_DIM})"
    if tq > SPLIT_MAX_QUERIES:
        return f"{tq} queries per row (at most {SPLIT_MAX_QUERIES})"
    if Hq % k.shape[1]:
        return f"{Hq} query heads are not a multiple of {k.shape[1]} KV heads"
    if visible.dim() != 3 or visible.shape[1:] != (tq, k.shape[2]) or visible.shape[0] not in (1, B):
        return f"visible must be ({B}, {tq}, {k.shape[2]}) bool, got {tuple(visible.shape)}"
    if route is not None and tuple(route.shape) not in ((B, tq), (1, tq)):
        return f"route must be ({B}, {tq}), got {tuple(route.shape)}"
    if not (q.is_cuda or interpreting()):
        return "needs CUDA tensors (or TRITON_INTERPRET=1 on the CPU)"
    return None


@triton.jit
def _split_partials(
    Q, K, V, VIS, ROUTE, M_OUT, L_OUT, ACC_OUT,
    sq_b, sq_h, sq_t, sq_d,
    sk_b, sk_h, sk_n, sk_d,
    sv_b, sv_h, sv_n, sv_d,
    svis_b, svis_t, svis_n,
    sr_b, sr_t,
    qk_scale, keys, keys_per_split, splits,
    HKV: tl.constexpr, G: tl.constexpr, TQ: tl.constexpr,
    HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    HAS_ROUTE: tl.constexpr, IEEE: tl.constexpr,
):
    split = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // HKV
    hkv = bh % HKV
    rows = tl.arange(0, BLOCK_M)  # query row r = (head in group) * TQ + query
    row_ok = rows < G * TQ
    t = rows % TQ
    head = hkv * G + rows // TQ
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_D

    if HAS_ROUTE:
        routed = (tl.load(ROUTE + b * sr_b + t * sr_t, mask=row_ok, other=0) != 0) & row_ok
    else:
        routed = row_ok
    lo = split * keys_per_split
    hi = tl.minimum(lo + keys_per_split, keys)
    # Every query row unrouted: the key loop runs zero times (no key, value or mask read).
    hi = tl.where(tl.max(routed.to(tl.int32), axis=0) > 0, hi, lo)

    q = tl.load(
        Q + b * sq_b + head[:, None] * sq_h + t[:, None] * sq_t + d[None, :] * sq_d,
        mask=routed[:, None] & d_ok[None, :], other=0.0,
    )
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_base = K + b * sk_b + hkv * sk_h
    v_base = V + b * sv_b + hkv * sv_h
    vis_base = VIS + b * svis_b + t[:, None] * svis_t
    for start in range(lo, hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        in_split = n < hi
        vis = tl.load(vis_base + n[None, :] * svis_n, mask=routed[:, None] & in_split[None, :], other=0) != 0
        # Keys no routed query row sees are not loaded.
        needed = tl.max(vis.to(tl.int32), axis=0) > 0
        k = tl.load(k_base + n[:, None] * sk_n + d[None, :] * sk_d, mask=needed[:, None] & d_ok[None, :], other=0.0)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = tl.where(vis, s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw no key yet
        alpha = tl.math.exp2(m_i - m_safe)
        p = tl.math.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + n[:, None] * sv_n + d[None, :] * sv_d, mask=needed[:, None] & d_ok[None, :], other=0.0)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    # Partials laid out (B * HKV, splits, G * TQ[, D]).
    part = bh * splits * (G * TQ) + split * (G * TQ) + rows
    tl.store(M_OUT + part, m_i, mask=row_ok)
    tl.store(L_OUT + part, l_i, mask=row_ok)
    tl.store(ACC_OUT + part[:, None] * HEAD_D + d[None, :], acc, mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _combine_splits(
    M_IN, L_IN, ACC_IN, ROUTE, OUT,
    so_b, so_h, so_t, so_d,
    sr_b, sr_t,
    splits,
    HKV: tl.constexpr, G: tl.constexpr, TQ: tl.constexpr,
    HEAD_D: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, HAS_ROUTE: tl.constexpr,
):
    bh = tl.program_id(0)
    row = tl.program_id(1)  # (head in group) * TQ + query
    b = bh // HKV
    hkv = bh % HKV
    t = row % TQ
    head = hkv * G + row // TQ
    if HAS_ROUTE:
        routed = tl.load(ROUTE + b * sr_b + t * sr_t) != 0
    else:
        routed = True
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_D
    # An unrouted row reads no partial: its output is exactly zero.
    ok = (s < splits) & routed
    part = bh * splits * (G * TQ) + s * (G * TQ) + row
    m = tl.load(M_IN + part, mask=ok, other=float("-inf"))
    l_s = tl.load(L_IN + part, mask=ok, other=0.0)
    acc = tl.load(ACC_IN + part[:, None] * HEAD_D + d[None, :], mask=ok[:, None] & d_ok[None, :], other=0.0)
    m_max = tl.max(m, axis=0)
    w = tl.math.exp2(m - tl.where(m_max == float("-inf"), 0.0, m_max))
    total = tl.sum(w * l_s, axis=0)
    o = tl.sum(w[:, None] * acc, axis=0)
    o = tl.where(total > 0, o / tl.where(total > 0, total, 1.0), 0.0)
    tl.store(OUT + b * so_b + head * so_h + t * so_t + d * so_d, o.to(OUT.dtype.element_ty), mask=d_ok)


@dataclass
class Partials:
    """Stage 1's output: per (row * KV head, split, query row) the running max ``m`` (log2
    domain, -inf: no key seen), the sum ``l`` and the unnormalised output ``acc``."""

    m: torch.Tensor  # (B * Hkv, S, G * Tq) fp32
    l: torch.Tensor  # noqa: E741  (B * Hkv, S, G * Tq) fp32
    acc: torch.Tensor  # (B * Hkv, S, G * Tq, D) fp32


def _route_args(route: torch.Tensor | None, fallback: torch.Tensor):
    """(pointer tensor, batch stride, query stride) of ``route``; a dummy when None."""
    if route is None:
        return fallback, 0, 0
    r = route.view(torch.uint8) if route.dtype == torch.bool else route
    return r, (0 if r.shape[0] == 1 else r.stride(0)), r.stride(1)


def split_partials(q, k, v, visible, scale: float, route=None, splits: int | None = None) -> Partials:
    """Stage 1 (arguments as ``split_kv_decode_attention``)."""
    reason = split_kv_unsupported(q, k, v, visible, route)
    if reason is not None:
        raise ValueError(f"split_kv_decode_attention: {reason}")
    B, Hq, tq, D = q.shape
    Hkv, tk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    on_gpu = q.is_cuda and not interpreting()
    cfg = split_config(on_gpu)
    if splits is None:
        sms = _sm_count(q.device.index or 0) if on_gpu else INTERPRET_SM_COUNT
        splits = num_splits(B, Hkv, tk, cfg, sms)
    per, splits = split_layout(tk, max(1, splits), cfg.block_n)
    rows = G * tq
    m = torch.empty(B * Hkv, splits, rows, dtype=torch.float32, device=q.device)
    out = Partials(m, torch.empty_like(m), m.new_empty(B * Hkv, splits, rows, D))
    vis = visible.view(torch.uint8) if visible.dtype == torch.bool else visible
    r, sr_b, sr_t = _route_args(route, vis)
    _split_partials[(splits, B * Hkv)](
        q, k, v, vis, r, out.m, out.l, out.acc,
        *q.stride(), *k.stride(), *v.stride(),
        0 if vis.shape[0] == 1 else vis.stride(0), vis.stride(1), vis.stride(2),
        sr_b, sr_t,
        scale * math.log2(math.e), tk, per, splits,
        HKV=Hkv, G=G, TQ=tq,
        BLOCK_M=max(16, triton.next_power_of_2(rows)), BLOCK_N=cfg.block_n,
        HEAD_D=D, BLOCK_D=_block_d(D),
        HAS_ROUTE=route is not None, IEEE=q.dtype == torch.float32,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


def combine_splits(parts: Partials, route, out: torch.Tensor) -> torch.Tensor:
    """Stage 2: the partials of ``parts`` into ``out (B, Hq, Tq, D)``; rows of unrouted
    queries are zero and read no partial."""
    B, Hq, tq, D = out.shape
    BH, splits, rows = parts.m.shape
    Hkv = BH // B
    r, sr_b, sr_t = _route_args(route, parts.m)
    _combine_splits[(BH, rows)](
        parts.m, parts.l, parts.acc, r, out,
        *out.stride(),
        sr_b, sr_t,
        splits,
        HKV=Hkv, G=Hq // Hkv, TQ=tq,
        BLOCK_S=max(2, triton.next_power_of_2(splits)), HEAD_D=D, BLOCK_D=_block_d(D), HAS_ROUTE=route is not None,
        num_warps=split_config(out.is_cuda and not interpreting()).num_warps,
    )
    return out


def split_kv_decode_attention(q, k, v, visible, scale: float, route=None, splits: int | None = None) -> torch.Tensor:
    """``masked_decode_attention``'s contract (kernels/decode.py) in two Triton kernels:
    q ``(B, Hq, Tq, D)``, k/v ``(B, Hkv, Tk, D)``, ``visible (B or 1, Tq, Tk)`` bool,
    ``route (B, Tq)`` bool or None. ``splits``: about that many key splits (tests); default
    from the shapes and the device. Returns ``(B, Hq, Tq, D)`` in q's dtype."""
    parts = split_partials(q, k, v, visible, scale, route, splits)
    return combine_splits(parts, route, torch.empty_like(q, memory_format=torch.contiguous_format))
