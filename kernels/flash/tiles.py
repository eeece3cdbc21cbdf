"""Tile helpers shared by the forward and backward kernels."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def exp2_tile(x, dtype: tl.constexpr, FAST: tl.constexpr):
    """`2 ** x` of a score tile, in fp32, or (FAST) in `dtype` (bf16/fp16).

    FAST rounds `x` to `dtype` and runs `ex2.approx` on register pairs: one MUFU
    instruction gives two exponentials, where the fp32 path spends one per score; on
    Hopper the exponentials, not the matmuls, bound the inner loops. The result is the
    probability tile the P @ V (or P^T @ dO) matmul consumes anyway, so it is rounded to
    `dtype` in both paths; FAST adds the rounding of `x` (relative error <= 2^-9 |x|)."""
    if FAST:
        if dtype == tl.bfloat16:
            return tl.inline_asm_elementwise(
                "ex2.approx.ftz.bf16x2 $0, $1;",
                "=r,r",
                [x.to(tl.bfloat16)],
                dtype=tl.bfloat16,
                is_pure=True,
                pack=2,
            )
        else:
            return tl.inline_asm_elementwise(
                "ex2.approx.f16x2 $0, $1;",
                "=r,r",
                [x.to(tl.float16)],
                dtype=tl.float16,
                is_pure=True,
                pack=2,
            )
    else:
        return tl.math.exp2(x)


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
