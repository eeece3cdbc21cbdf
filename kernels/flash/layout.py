"""Program layout shared by the kernels: which rows a program owns, the key ranges of
compacted queries, and the three-way split of a loop range (masked head, unmasked middle,
masked tail)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def query_program(T, HKV, G: tl.constexpr, GP: tl.constexpr, BLOCK_M: tl.constexpr):
    """(b, hkv, c0, r_h, c_all) of a query-block program (forward, dQ): `GP` query heads of
    KV head `hkv` x `BLOCK_M // GP` compacted queries from `c0`; `r_h`, `c_all` per row.
    Later query blocks see more keys: they are launched first, heads varying fastest."""
    BMQ: tl.constexpr = BLOCK_M // GP
    NCH: tl.constexpr = G // GP
    n_heads = tl.num_programs(0) // tl.cdiv(T, BMQ)
    pid = tl.program_id(0) % n_heads
    pid_m = tl.cdiv(T, BMQ) - 1 - tl.program_id(0) // n_heads
    hc = pid % NCH
    hkv = (pid // NCH) % HKV
    b = pid // (NCH * HKV)
    c0 = pid_m * BMQ
    rows = tl.arange(0, BLOCK_M)
    r_h = hkv * G + hc * GP + rows // BMQ
    c_all = c0 + rows % BMQ
    return b, hkv, c0, r_h, c_all


@triton.jit
def key_ranges(order_b, start_b, c, c0, cnt, WINDOW, BMQ: tl.constexpr, BLOCK_N: tl.constexpr):
    """For the sorted compacted queries `c` (first `c0`, at most BMQ, `cnt` routed): each
    row's position and lowest visible key, and the key-tile bounds `n_lo <= full_lo <=
    full_hi <= n_hi`: keys [n_lo, n_hi) cover every row, [full_lo, full_hi) are visible to
    all rows (no mask needed)."""
    pos = tl.load(order_b + c)
    row_lo = tl.maximum(tl.load(start_b + pos), pos - WINDOW + 1)
    pos_first = tl.load(order_b + c0)
    pos_last = tl.load(order_b + tl.minimum(c0 + BMQ, cnt) - 1)
    lo_first = tl.maximum(tl.load(start_b + pos_first), pos_first - WINDOW + 1)
    lo_last = tl.maximum(tl.load(start_b + pos_last), pos_last - WINDOW + 1)
    n_lo = (lo_first // BLOCK_N) * BLOCK_N
    n_hi = tl.cdiv(pos_last + 1, BLOCK_N) * BLOCK_N
    full_lo = tl.cdiv(lo_last, BLOCK_N) * BLOCK_N
    full_hi = tl.maximum(((pos_first + 1) // BLOCK_N) * BLOCK_N, full_lo)
    return pos, row_lo, n_lo, full_lo, full_hi, n_hi


@triton.jit
def split_range(part: tl.constexpr, lo, mid_lo, mid_hi, hi):
    """Part 0, 1, 2 of [lo, hi): the masked head [lo, min(mid_lo, hi)), the unmasked middle
    [mid_lo, mid_hi), the masked tail [mid_hi, hi) (loops over it are unrolled per part)."""
    if part == 0:
        return lo, tl.minimum(mid_lo, hi)
    elif part == 1:
        return mid_lo, mid_hi
    else:
        return mid_hi, hi


@triton.jit
def head_bases(K, V, b, hkv, skb, skh, svb, svh, DESC: tl.constexpr):
    """K/V arguments of one (batch, KV head) for load_kv_tile: the descriptors themselves,
    or pointers offset to that head."""
    if DESC:
        return K, V
    else:
        return (
            K + b.to(tl.int64) * skb + hkv.to(tl.int64) * skh,
            V + b.to(tl.int64) * svb + hkv.to(tl.int64) * svh,
        )


@triton.jit
def compacted_rows(X, b, HQ, r_h, T, c_all, D: tl.constexpr, offs_d):
    """Pointers to rows `c_all` of heads `r_h` in a contiguous (B, Hq, T, D) buffer
    indexed by compacted query."""
    return X + ((b.to(tl.int64) * HQ + r_h[:, None]) * T + c_all[:, None]) * D + offs_d[None, :]
