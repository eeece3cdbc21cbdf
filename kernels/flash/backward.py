"""Backward kernels: dQ per compacted query block, dK/dV per key block.

`attn_bwd_dq_kernel` mirrors the forward (same program layout and key ranges), computes
`delta = rowsum(dO * O)` for its rows on the way and stores it for the dK/dV pass, and
writes zeros at unrouted rows of dQ. `attn_bwd_dkdv_kernel` owns a key block and sums over
all query heads of its KV group and every compacted query that can see the block; the
queries are sorted by position, so those form one contiguous range of compacted indices,
found from prefix counts (`cum`) and document ends without searching. Every dK/dV row is
written by exactly one program: with the shipped configs (no atomics) results are bitwise
deterministic.

Opt-in variants (kernels/flash/config.py): compacted q/dO copies written by the dQ pass
(COMPACT, COMPACT_DESC), K/V reloaded per iteration (KV_RELOAD), TMA descriptors for K/V
(KV_DESC), and ATOMIC_DQ, where dK/dV also accumulates dQ with fp32 atomics and the dQ
kernel only prepares (MODE 1) and finishes (MODE 2).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .layout import compacted_rows, head_bases, key_ranges, query_program, split_range
from .tiles import load_kv_tiles, load_rows


@triton.jit
def _dq_inner(
    dq,
    q,
    do,
    lse,
    delta,
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
        s = tl.dot(q, tl.trans(k))
        p = tl.math.exp2(s * qk_scale - lse[:, None])
        if MASK:
            kpos = n + offs_n
            vis = (kpos[None, :] <= pos[:, None]) & (kpos[None, :] >= row_lo[:, None])
            p = tl.where(vis, p, 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq)
    return dq


@triton.jit
def attn_bwd_dq_kernel(
    Q,
    K,
    V,
    O,  # noqa: E741
    DO,
    DQ,
    QC,
    DOC,
    DQACC,
    LSE,
    DELTA,
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
    sdob,
    sdoh,
    sdot,
    sdqb,
    sdqh,
    sdqt,
    T,
    HQ,
    HKV,
    WINDOW,
    qk_scale,
    scale,
    G: tl.constexpr,
    GP: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr,
    KV_DESC: tl.constexpr,
    WRITE_COMPACT: tl.constexpr,
    MODE: tl.constexpr,
):
    """MODE 0: dQ itself (the deterministic backward). With the atomic-dQ dK/dV pass,
    MODE 1 runs before it (delta, compacted copies, zeroed fp32 accumulator rows DQACC)
    and MODE 2 after it (DQACC rows, scaled, scattered to dQ by position)."""
    BMQ: tl.constexpr = BLOCK_M // GP
    EVEN_D: tl.constexpr = BLOCK_D == D
    b, hkv, c0, r_h, c_all = query_program(T, HKV, G, GP, BLOCK_M)
    cnt = tl.load(COUNT + b)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    order_b = ORDER + b.to(tl.int64) * T
    pos_out = tl.load(order_b + tl.minimum(c_all, T - 1))
    dq_ptrs = (
        DQ
        + b.to(tl.int64) * sdqb
        + r_h[:, None].to(tl.int64) * sdqh
        + pos_out[:, None].to(tl.int64) * sdqt
        + offs_d[None, :]
    )
    out_mask = (c_all[:, None] < T) & (offs_d[None, :] < D)
    # WRITE_COMPACT: q and dO rows are also stored by compacted index (QC, DOC: (B, Hq,
    # T, D) contiguous) so the dK/dV pass streams them without a gather; rows past the
    # routed count get zeros, so every row it may read is finite.
    qc_ptrs = compacted_rows(QC, b, HQ, r_h, T, c_all, D, offs_d)
    doc_ptrs = compacted_rows(DOC, b, HQ, r_h, T, c_all, D, offs_d)
    acc_ptrs = compacted_rows(DQACC, b, HQ, r_h, T, c_all, D, offs_d)

    if c0 >= cnt:
        if MODE != 1:
            zeros = tl.zeros([BLOCK_M, BLOCK_D], dtype=DQ.dtype.element_ty)
            tl.store(dq_ptrs, zeros, mask=out_mask)
        if WRITE_COMPACT and MODE != 2:
            zeros = tl.zeros([BLOCK_M, BLOCK_D], dtype=QC.dtype.element_ty)
            tl.store(qc_ptrs, zeros, mask=out_mask)
            tl.store(doc_ptrs, zeros, mask=out_mask)
    elif MODE == 2:
        valid = c_all < cnt
        acc = tl.load(acc_ptrs, mask=out_mask & valid[:, None], other=0.0)
        acc = tl.where(valid[:, None], acc * scale, 0.0)
        tl.store(dq_ptrs, acc.to(DQ.dtype.element_ty), mask=out_mask)
    else:
        c = tl.minimum(c_all, cnt - 1)
        valid = c_all < cnt
        pos, row_lo, n_lo, full_lo, full_hi, n_hi = key_ranges(
            order_b, START + b.to(tl.int64) * T, c, c0, cnt, WINDOW, BMQ, BLOCK_N
        )

        bh_off = b.to(tl.int64) * HQ + r_h
        q = load_rows(
            Q
            + b.to(tl.int64) * sqb
            + r_h[:, None].to(tl.int64) * sqh
            + pos[:, None].to(tl.int64) * sqt,
            pos,
            offs_d,
            valid,
            D,
            EVEN_D,
            False,
        )
        do = load_rows(
            DO
            + b.to(tl.int64) * sdob
            + r_h[:, None].to(tl.int64) * sdoh
            + pos[:, None].to(tl.int64) * sdot,
            pos,
            offs_d,
            valid,
            D,
            EVEN_D,
            False,
        )
        o = load_rows(
            O
            + b.to(tl.int64) * sob
            + r_h[:, None].to(tl.int64) * soh
            + pos[:, None].to(tl.int64) * sot,
            pos,
            offs_d,
            valid,
            D,
            EVEN_D,
            False,
        )
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        tl.store(DELTA + bh_off * T + c_all, delta, mask=valid)
        if WRITE_COMPACT:
            tl.store(qc_ptrs, q, mask=out_mask)
            tl.store(doc_ptrs, do, mask=out_mask)
        if MODE == 1:
            tl.store(acc_ptrs, tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32), mask=out_mask)
        else:
            _dq_rows(
                DQ,
                K,
                V,
                q,
                do,
                delta,
                LSE,
                bh_off,
                c,
                valid,
                dq_ptrs,
                out_mask,
                b,
                hkv,
                skb,
                skh,
                skt,
                svb,
                svh,
                svt,
                pos,
                row_lo,
                n_lo,
                full_lo,
                full_hi,
                n_hi,
                T,
                qk_scale,
                scale,
                offs_n,
                offs_d,
                D,
                EVEN_D,
                BLOCK_M,
                BLOCK_N,
                BLOCK_D,
                UPCAST,
                KV_DESC,
            )


@triton.jit
def _dq_rows(
    DQ,
    K,
    V,
    q,
    do,
    delta,
    LSE,
    bh_off,
    c,
    valid,
    dq_ptrs,
    out_mask,
    b,
    hkv,
    skb,
    skh,
    skt,
    svb,
    svh,
    svt,
    pos,
    row_lo,
    n_lo,
    full_lo,
    full_hi,
    n_hi,
    T,
    qk_scale,
    scale,
    offs_n,
    offs_d,
    D: tl.constexpr,
    EVEN_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,
    KV_DESC: tl.constexpr,
):
    """MODE 0 of the dQ kernel: the key loop for the program's rows, then the store."""
    lse = tl.load(LSE + bh_off * T + c)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    k_base, v_base = head_bases(K, V, b, hkv, skb, skh, svb, svh, KV_DESC)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # Masked head, unmasked middle, masked tail (unrolled).
    for part in tl.static_range(3):
        lo, hi = split_range(part, n_lo, full_lo, full_hi, n_hi)
        dq = _dq_inner(
            dq,
            q,
            do,
            lse,
            delta,
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
            T,
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
    dq = tl.where(valid[:, None], dq * scale, 0.0)
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=out_mask)


@triton.jit
def _dkdv_inner(
    dk,
    dv,
    k,
    v,
    K,
    V,
    k_base,
    v_base,
    hkv,
    ks,
    skt,
    svt,
    offs_n,
    Q,
    DO,
    DQACC,
    LSE,
    DELTA,
    order_b,
    start_b,
    b,
    h0,
    q_off,
    do_off,
    stat_off,
    sqh,
    sqt,
    sdoh,
    sdot,
    r_q,
    r_h,
    kpos,
    c_lo,
    c_hi_blocks,
    c_hi,
    T,
    WINDOW,
    qk_scale,
    offs_d,
    D: tl.constexpr,
    EVEN_D: tl.constexpr,
    BMQ: tl.constexpr,
    GP: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MASK: tl.constexpr,
    UPCAST: tl.constexpr,
    COMPACT: tl.constexpr,
    COMPACT_DESC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    KV_RELOAD: tl.constexpr,
    KV_DESC: tl.constexpr,
    ATOMIC_DQ: tl.constexpr,
):
    for cb in range(c_lo, c_hi_blocks, BMQ):
        if KV_RELOAD:
            # The key block again each iteration (an L2 hit): loaded inside the loop, the
            # tiles are pipelined through shared memory and feed the matmuls from there
            # instead of holding 2 x BLOCK_N x D operands in registers across the loop.
            k, v = load_kv_tiles(
                K,
                V,
                k_base,
                v_base,
                b,
                hkv,
                ks,
                skt,
                svt,
                T,
                offs_n,
                offs_d,
                D,
                EVEN_D,
                BLOCK_N,
                BLOCK_D,
                True,
                KV_DESC,
                UPCAST,
            )
        c = cb + r_q
        if MASK:
            valid = c < c_hi
            c = tl.minimum(c, c_hi - 1)
        if MASK or not COMPACT:
            pos = tl.load(order_b + c)
        if COMPACT_DESC:
            # Q, DO: descriptors over the compacted (B, Hq, T, D) copies; rows past T
            # are zero-filled, rows past c_hi are finite and masked below.
            q = Q.load([b, h0, cb, 0]).reshape(GP * BMQ, BLOCK_D)
            do = DO.load([b, h0, cb, 0]).reshape(GP * BMQ, BLOCK_D)
        elif COMPACT:
            row = (stat_off + r_h.to(tl.int64) * T + c) * D
            q = load_rows(Q + row[:, None], c, offs_d, c < T, D, EVEN_D, False)
            do = load_rows(DO + row[:, None], c, offs_d, c < T, D, EVEN_D, False)
        else:
            q = load_rows(
                Q + q_off + r_h[:, None].to(tl.int64) * sqh + pos[:, None].to(tl.int64) * sqt,
                pos,
                offs_d,
                c < T,
                D,
                EVEN_D,
                False,
            )
            do = load_rows(
                DO + do_off + r_h[:, None].to(tl.int64) * sdoh + pos[:, None].to(tl.int64) * sdot,
                pos,
                offs_d,
                c < T,
                D,
                EVEN_D,
                False,
            )
        stat = stat_off + r_h.to(tl.int64) * T + c
        lse = tl.load(LSE + stat)
        delta = tl.load(DELTA + stat)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        st = tl.dot(k, tl.trans(q))
        pt = tl.math.exp2(st * qk_scale - lse[None, :])
        if MASK:
            row_lo = tl.maximum(tl.load(start_b + pos), pos - WINDOW + 1)
            vis = (
                (kpos[:, None] <= pos[None, :])
                & (kpos[:, None] >= row_lo[None, :])
                & valid[None, :]
            )
            pt = tl.where(vis, pt, 0.0)
        dv = tl.dot(pt.to(do.dtype), do, dv)
        dpt = tl.dot(v, tl.trans(do))
        dst = pt * (dpt - delta[None, :])
        dk = tl.dot(dst.to(q.dtype), q, dk)
        if ATOMIC_DQ:
            # This block's share of dQ = dS K, added to the fp32 rows of the compacted
            # queries (unscaled; the MODE 2 dQ pass scales and scatters them).
            dq = tl.dot(tl.trans(dst.to(k.dtype)), k)
            amask = (c < T)[:, None] & (offs_d[None, :] < D)
            if MASK:
                amask = amask & valid[:, None]
            tl.atomic_add(
                DQACC + stat[:, None] * D + offs_d[None, :], dq, mask=amask, sem="relaxed"
            )
    return dk, dv


@triton.jit
def attn_bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    DK,
    DV,
    DQACC,
    LSE,
    DELTA,
    ORDER,
    CUM,
    START,
    END,
    sqb,
    sqh,
    sqt,
    skb,
    skh,
    skt,
    svb,
    svh,
    svt,
    sdob,
    sdoh,
    sdot,
    sdkb,
    sdkh,
    sdkt,
    sdvb,
    sdvh,
    sdvt,
    T,
    HQ,
    HKV,
    WINDOW,
    qk_scale,
    scale,
    G: tl.constexpr,
    GP: tl.constexpr,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr,
    COMPACT: tl.constexpr,
    COMPACT_DESC: tl.constexpr,
    KV_RELOAD: tl.constexpr,
    KV_DESC: tl.constexpr,
    ATOMIC_DQ: tl.constexpr,
):
    """COMPACT: Q and DO are the compacted copies the dQ pass wrote ((B, Hq, T, D)
    contiguous, by compacted index), as pointers or (COMPACT_DESC) tensor descriptors."""
    BMQ: tl.constexpr = BLOCK_M // GP
    NCH: tl.constexpr = G // GP
    EVEN_D: tl.constexpr = BLOCK_D == D
    pid = tl.program_id(0) % (tl.num_programs(0) // tl.cdiv(T, BLOCK_N))
    pid_n = tl.program_id(0) // (tl.num_programs(0) // tl.cdiv(T, BLOCK_N))
    hkv = pid % HKV
    b = pid // HKV
    ks = pid_n * BLOCK_N
    kl = tl.minimum(ks + BLOCK_N, T) - 1
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kpos = ks + offs_n
    kvalid = kpos < T

    k_base, v_base = head_bases(K, V, b, hkv, skb, skh, svb, svh, KV_DESC)
    if KV_RELOAD:
        # Placeholders of the tiles' type (loop-carried); reloaded in every iteration.
        if UPCAST:
            k = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
        else:
            k = tl.zeros([BLOCK_N, BLOCK_D], dtype=DK.dtype.element_ty)
        v = k
    else:
        k, v = load_kv_tiles(
            K,
            V,
            k_base,
            v_base,
            b,
            hkv,
            ks,
            skt,
            svt,
            T,
            offs_n,
            offs_d,
            D,
            EVEN_D,
            BLOCK_N,
            BLOCK_D,
            True,
            KV_DESC,
            UPCAST,
        )
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    # Compacted queries that see some key of [ks, kl]: positions in [ks, min(end(kl),
    # kl + window - 1)]. Those with position >= kl and <= min(end(ks), ks + window - 1)
    # see every key of the block (no mask).
    cum_b = CUM + b.to(tl.int64) * (T + 1)
    end_b = END + b.to(tl.int64) * T
    c_lo = tl.load(cum_b + ks)
    c_diag = tl.load(cum_b + kl)
    c_hi = tl.load(cum_b + tl.minimum(tl.load(end_b + kl), tl.minimum(kl + WINDOW - 1, T - 1)) + 1)
    c_full = tl.load(
        cum_b + tl.minimum(tl.load(end_b + ks), tl.minimum(ks + WINDOW - 1, T - 1)) + 1
    )
    c1 = c_lo + tl.cdiv(c_diag - c_lo, BMQ) * BMQ
    c2 = c1 + (tl.maximum(c_full - c1, 0) // BMQ) * BMQ

    order_b = ORDER + b.to(tl.int64) * T
    start_b = START + b.to(tl.int64) * T
    rows = tl.arange(0, BLOCK_M)
    r_q = rows % BMQ
    q_off = b.to(tl.int64) * sqb
    do_off = b.to(tl.int64) * sdob
    stat_off = b.to(tl.int64) * HQ * T
    for hc in range(NCH):
        r_h = hkv * G + hc * GP + rows // BMQ
        # Masked head, unmasked middle (every query sees the whole block), masked tail.
        for part in tl.static_range(3):
            lo, hi = split_range(part, c_lo, c1, c2, c_hi)
            dk, dv = _dkdv_inner(
                dk,
                dv,
                k,
                v,
                K,
                V,
                k_base,
                v_base,
                hkv,
                ks,
                skt,
                svt,
                offs_n,
                Q,
                DO,
                DQACC,
                LSE,
                DELTA,
                order_b,
                start_b,
                b,
                hkv * G + hc * GP,
                q_off,
                do_off,
                stat_off,
                sqh,
                sqt,
                sdoh,
                sdot,
                r_q,
                r_h,
                kpos,
                lo,
                hi,
                c_hi,
                T,
                WINDOW,
                qk_scale,
                offs_d,
                D,
                EVEN_D,
                BMQ,
                GP,
                BLOCK_D,
                part != 1,
                UPCAST,
                COMPACT,
                COMPACT_DESC,
                BLOCK_N,
                KV_RELOAD,
                KV_DESC,
                ATOMIC_DQ,
            )

    dk = dk * scale
    dmask = kvalid[:, None] & (offs_d[None, :] < D)
    tl.store(
        DK
        + b.to(tl.int64) * sdkb
        + hkv.to(tl.int64) * sdkh
        + kpos[:, None].to(tl.int64) * sdkt
        + offs_d[None, :],
        dk.to(DK.dtype.element_ty),
        mask=dmask,
    )
    tl.store(
        DV
        + b.to(tl.int64) * sdvb
        + hkv.to(tl.int64) * sdvh
        + kpos[:, None].to(tl.int64) * sdvt
        + offs_d[None, :],
        dv.to(DV.dtype.element_ty),
        mask=dmask,
    )
