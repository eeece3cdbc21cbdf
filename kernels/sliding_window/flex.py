"""Sliding-window attention with document masking through FlexAttention.

The block mask is built from block-level bounds (O((T / block)^2) booleans at most),
never from a dense T x T token mask: a key block is *full* for a query block when one
document spans both and every pair is inside the window and causal, *partial* when some
pair may be visible (the mask_mod then decides per token), skipped otherwise. Document
equality is tested on document start positions, which are monotone along the sequence.
"""

from __future__ import annotations

import functools

import torch

from ..utils import doc_start_positions

BLOCK = 128


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
    return torch.compile(_flex_call, dynamic=False, fullgraph=True)


def _dense_to_ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dense = dense.to(torch.int32)
    num = dense.sum(dim=-1).to(torch.int32)
    idx = torch.argsort(dense, dim=-1, descending=True, stable=True).to(torch.int32)
    return num.contiguous(), idx.contiguous()


def sliding_window_block_mask(starts: torch.Tensor, window: int, block: int = BLOCK):
    """BlockMask for `(B, T)` document starts and a causal window."""
    from torch.nn.attention.flex_attention import BlockMask

    B, T = starts.shape
    nb = (T + block - 1) // block
    first = torch.arange(nb, device=starts.device) * block
    last = torch.clamp(first + block - 1, max=T - 1)
    s_first, s_last = starts[:, first], starts[:, last]  # (B, nb)
    qs, qe = first[:, None], last[:, None]
    ks, ke = first[None, :], last[None, :]
    any_pair = (ks <= qe) & (qs - ke < window)
    any_pair = any_pair & (s_first[:, :, None] <= s_last[:, None, :])
    any_pair = any_pair & (s_first[:, None, :] <= s_last[:, :, None])
    one_doc = (s_first == s_last)[:, :, None] & (s_first == s_last)[:, None, :]
    one_doc = one_doc & (s_first[:, :, None] == s_first[:, None, :])
    full = (ke <= qs) & (qe - ks < window) & one_doc
    partial = any_pair & ~full
    kv_num, kv_idx = _dense_to_ordered(partial[:, None])
    full_num, full_idx = _dense_to_ordered(full[:, None])

    def mask_mod(b, h, q_idx, kv_idx):
        return (
            (kv_idx <= q_idx) & (q_idx - kv_idx < window) & (starts[b, q_idx] == starts[b, kv_idx])
        )

    return BlockMask.from_kv_blocks(
        kv_num,
        kv_idx,
        full_num,
        full_idx,
        BLOCK_SIZE=block,
        mask_mod=mask_mod,
        seq_lengths=(T, T),
    )


def sliding_window_attention_flex(q, k, v, window: int, doc_ids, scale: float) -> torch.Tensor:
    B, _, T, _ = q.shape
    if doc_ids is None:
        starts = torch.zeros(B, T, dtype=torch.int32, device=q.device)
    else:
        starts = doc_start_positions(doc_ids)
    mask = sliding_window_block_mask(starts, min(window, T))
    enable_gqa = q.shape[1] != k.shape[1]
    return _compiled_flex()(q, k, v, mask, scale, enable_gqa)
