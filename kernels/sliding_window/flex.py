"""Sliding-window attention with document masking through FlexAttention (block mask from
block-level bounds, kernels/flex_mask.py: never a dense T x T token mask)."""

from __future__ import annotations

import functools

import torch

from ..flex_mask import BLOCK, query_block_mask
from ..utils import allow_recompiles, doc_start_positions


def _flex_call(q, k, v, block_mask, scale, enable_gqa):
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=enable_gqa)


@functools.cache
def _compiled_flex():
    # Compiled through our own function: dynamo's recompile limit counts cache entries per
    # code object, so compiling `flex_attention` itself shares that budget with every other
    # caller that compiles it (a benchmark, a user's model); past the limit dynamo runs it
    # eagerly, which materialises the (B, H, T, T) scores: 2 TiB at 128K for 32 heads.
    # fullgraph: a graph break must fail loudly rather than fall back to that.
    allow_recompiles()
    return torch.compile(_flex_call, dynamic=False, fullgraph=True)


def sliding_window_block_mask(starts: torch.Tensor, window: int, block: int = BLOCK):
    """BlockMask for `(B, T)` document starts and a causal window (every position a query)."""
    B, T = starts.shape
    q_pos = torch.arange(T, device=starts.device, dtype=torch.int32).expand(B, T)
    return query_block_mask(q_pos, starts, window, block)


def sliding_window_attention_flex(q, k, v, window: int, doc_ids, scale: float) -> torch.Tensor:
    B, _, T, _ = q.shape
    if doc_ids is None:
        starts = torch.zeros(B, T, dtype=torch.int32, device=q.device)
    else:
        starts = doc_start_positions(doc_ids)
    mask = sliding_window_block_mask(starts, min(window, T))
    enable_gqa = q.shape[1] != k.shape[1]
    return _compiled_flex()(q, k, v, mask, scale, enable_gqa)
