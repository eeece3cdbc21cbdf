"""Chunk core of the pure-PyTorch attention ops: GQA without repeated K/V, fp32 softmax."""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from .utils import SCORE_BUDGET


def attend_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float
) -> torch.Tensor:
    """`q (B, Hq, n, D)`, `k`/`v (B, Hkv, L, D)`, `mask (B, n, L)` bool (True = attend).

    Query heads are folded into the query axis per KV group (`(B, Hkv, G*n, D)`), so the
    matmuls broadcast over KV heads instead of materialising repeated K/V. Every row of
    `mask` must have at least one True entry.
    """
    B, Hq, n, D = q.shape
    Hkv, L = k.shape[1], k.shape[2]
    G = Hq // Hkv
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = torch.matmul(q.to(acc).reshape(B, Hkv, G * n, D), k.to(acc).transpose(-1, -2))
    s = (s * scale).view(B, Hkv, G, n, L)
    s = s.masked_fill(~mask[:, None, None], float("-inf"))
    p = torch.softmax(s, dim=-1)
    o = torch.matmul(p.view(B, Hkv, G * n, L), v.to(acc))
    return o.view(B, Hq, n, D).to(q.dtype)


def maybe_checkpointed(fn, *args):
    """Run `fn(*args)`, recomputing it in backward when autograd is recording.

    Keeps training memory at one chunk's scores instead of the scores of every chunk.
    """
    if torch.is_grad_enabled() and any(
        isinstance(a, torch.Tensor) and a.requires_grad for a in args
    ):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def query_chunk_size(heads: int, batch: int, keys_fixed: int, *, keys_grow: bool) -> int:
    """Queries per chunk so that `batch*heads*n*L` stays under the score budget.

    `L = keys_fixed` (token-sparse: all keys) or `keys_fixed + n` (sliding window).
    """
    per_query = max(1, batch * heads)
    budget = SCORE_BUDGET / per_query
    if keys_grow:
        n = (-keys_fixed + math.sqrt(keys_fixed * keys_fixed + 4 * budget)) / 2
    else:
        n = budget / max(1, keys_fixed)
    return max(16, int(n))
