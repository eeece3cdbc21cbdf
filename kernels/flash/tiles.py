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
