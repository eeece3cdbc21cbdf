"""Forward kernel: attention of compacted query positions, GQA heads packed per program.

A program owns `BLOCK_M` rows = `GP` query heads of one KV group x `BLOCK_M // GP`
consecutive compacted queries, so each K/V tile it loads serves `GP` heads. Query `pos`
sees keys `[row_lo, pos]` with `row_lo = max(doc start, pos - window + 1)`. Queries are
sorted by position, so the key range of a program splits into a masked head, an unmasked
middle (visible to every row) and a masked tail near the diagonal.

Every output row is written: programs past the routed count write zeros at the unrouted
positions (`order[count:]`), so the output needs no memset.

Queries may be the last `T` of `TK` keys (a prefill chunk against a KV cache): `order`
then holds key positions, query row = position - `Q_OFF` with `Q_OFF = TK - T`. Training
calls have `TK == T` and `Q_OFF == 0`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .layout import head_bases, key_ranges, query_program, split_range
from .tiles import load_kv_tiles


@triton.jit
def _fwd_inner(
    acc,
    m_i,
    l_i,
    q,
    K,
    V,
    k_base,
    v_base,
    b,
    hkv,
    skt,
    svt,
    pos,
    row_lo,
    n_lo,
    n_hi,
    T,
    qk_scale,
    offs_n,
    offs_d,
    D: tl.constexpr,
    EVEN_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MASK: tl.constexpr,
    UPCAST: tl.constexpr,
    KV_DESC: tl.constexpr,
):
    for n in range(n_lo, n_hi, BLOCK_N):
        k, v = load_kv_tiles(
            K,
            V,
            k_base,
            v_base,
            b,
            hkv,
            n,
            skt,
            svt,
            T,
            offs_n,
            offs_d,
            D,
            EVEN_D,
            BLOCK_N,
            BLOCK_D,
            MASK,
            KV_DESC,
            UPCAST,
        )
        # The softmax scale is folded into the exponent (one FMA per score).
        s = tl.dot(q, tl.trans(k))
        if MASK:
            kpos = n + offs_n
            vis = (kpos[None, :] <= pos[:, None]) & (kpos[None, :] >= row_lo[:, None])
            s = tl.where(vis, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def attn_fwd_kernel(
    Q,
    K,
    V,
    O,  # noqa: E741
    LSE,
    ORDER,
    COUNT,
    START,
    sqb,
    sqh,
    sqt,
    skb,
    skh,
    skt,
    svb,
    svh,
    svt,
    sob,
    soh,
    sot,
    T,
    TK,
    Q_OFF,
    HQ,
    HKV,
    WINDOW,
    qk_scale,
    G: tl.constexpr,
    GP: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr,
    KV_DESC: tl.constexpr,
):
    BMQ: tl.constexpr = BLOCK_M // GP
    EVEN_D: tl.constexpr = BLOCK_D == D
    b, hkv, c0, r_h, c_all = query_program(T, HKV, G, GP, BLOCK_M)
    cnt = tl.load(COUNT + b)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    order_b = ORDER + b.to(tl.int64) * T
    pos_out = tl.load(order_b + tl.minimum(c_all, T - 1))
    o_ptrs = (
        O
        + b.to(tl.int64) * sob
        + r_h[:, None].to(tl.int64) * soh
        + (pos_out - Q_OFF)[:, None].to(tl.int64) * sot
        + offs_d[None, :]
    )
    out_mask = (c_all[:, None] < T) & (offs_d[None, :] < D)

    if c0 >= cnt:
        tl.store(o_ptrs, tl.zeros([BLOCK_M, BLOCK_D], dtype=O.dtype.element_ty), mask=out_mask)
    else:
        c = tl.minimum(c_all, cnt - 1)
        pos, row_lo, n_lo, full_lo, full_hi, n_hi = key_ranges(
            order_b, START + b.to(tl.int64) * TK, c, c0, cnt, WINDOW, BMQ, BLOCK_N
        )
        q_ptrs = (
            Q
            + b.to(tl.int64) * sqb
            + r_h[:, None].to(tl.int64) * sqh
            + (pos - Q_OFF)[:, None].to(tl.int64) * sqt
            + offs_d[None, :]
        )
        if EVEN_D:
            q = tl.load(q_ptrs)
        else:
            q = tl.load(q_ptrs, mask=offs_d[None, :] < D, other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
        k_base, v_base = head_bases(K, V, b, hkv, skb, skh, svb, svh, KV_DESC)

        m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

        # Masked head, unmasked middle, masked tail (unrolled).
        for part in tl.static_range(3):
            lo, hi = split_range(part, n_lo, full_lo, full_hi, n_hi)
            acc, m_i, l_i = _fwd_inner(
                acc,
                m_i,
                l_i,
                q,
                K,
                V,
                k_base,
                v_base,
                b,
                hkv,
                skt,
                svt,
                pos,
                row_lo,
                lo,
                hi,
                TK,
                qk_scale,
                offs_n,
                offs_d,
                D,
                EVEN_D,
                BLOCK_N,
                BLOCK_D,
                part != 1,
                UPCAST,
                KV_DESC,
            )

        acc = acc / l_i[:, None]
        valid = c_all < cnt
        acc = tl.where(valid[:, None], acc, 0.0)
        tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=out_mask)
        lse_ptrs = LSE + (b.to(tl.int64) * HQ + r_h) * T + c_all
        tl.store(lse_ptrs, m_i + tl.math.log2(l_i), mask=valid)
