"""Tile helpers shared by the forward and backward kernels."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_rows(
    base, pos, offs_d, mask_rows, D: tl.constexpr, EVEN_D: tl.constexpr, ROWMASK: tl.constexpr
):
    """Rows of a `[rows, BLOCK_D]` tile; `base` holds one pointer per row. Masked rows and
    columns past D read as zero."""
    ptrs = base + offs_d[None, :]
    if ROWMASK:
        return tl.load(ptrs, mask=mask_rows[:, None] & (offs_d[None, :] < D), other=0.0)
    elif EVEN_D:
        return tl.load(ptrs)
    else:
        return tl.load(ptrs, mask=offs_d[None, :] < D, other=0.0)


@triton.jit
def load_kv_tile(
    X,
    base,
    b,
    h,
    n,
    stride_t,
    T,
    offs_n,
    offs_d,
    D: tl.constexpr,
    EVEN_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MASK: tl.constexpr,
    DESC: tl.constexpr,
):
    """Rows `[n, n + BLOCK_N)` of one (batch, head) of K or V, zero past T and past D.

    DESC: `X` is a tensor descriptor over (B, H, T, D) (TMA on Hopper, out-of-bounds rows
    zero-filled by the copy engine); otherwise `base` points at (b, h) and rows are loaded
    through pointers."""
    if DESC:
        return X.load([b, h, n, 0]).reshape(BLOCK_N, BLOCK_D)
    else:
        kpos = n + offs_n
        rows = base + kpos[:, None].to(tl.int64) * stride_t
        return load_rows(rows, kpos, offs_d, kpos < T, D, EVEN_D, MASK)


@triton.jit
def load_kv_tiles(
    K,
    V,
    k_base,
    v_base,
    b,
    h,
    n,
    skt,
    svt,
    T,
    offs_n,
    offs_d,
    D: tl.constexpr,
    EVEN_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MASK: tl.constexpr,
    DESC: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """The K and V tiles of rows `[n, n + BLOCK_N)` (load_kv_tile), upcast to fp32 in the
    interpreter (its bf16 dot is wrong)."""
    k = load_kv_tile(
        K, k_base, b, h, n, skt, T, offs_n, offs_d, D, EVEN_D, BLOCK_N, BLOCK_D, MASK, DESC
    )
    v = load_kv_tile(
        V, v_base, b, h, n, svt, T, offs_n, offs_d, D, EVEN_D, BLOCK_N, BLOCK_D, MASK, DESC
    )
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    return k, v
