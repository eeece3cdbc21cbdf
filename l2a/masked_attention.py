"""Attention with an explicit mask, for the cases the sequence kernels do not cover:
decoding with a cache (queries at the end of a longer key sequence) and padded batches.

This is the path of ``generate()``. It is correct rather than fast: every query is
computed, and the L2A KV cache that keeps only W local keys is a separate component.
"""

from __future__ import annotations

import torch

from kernels.masked_attention import attend_chunk


def dense_masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_index: torch.Tensor,
    key_valid: torch.Tensor | None = None,
    window: int | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal (optionally sliding-window) attention of queries placed inside a key sequence.

    Args:
        q: (B, Hq, Tq, D) queries.
        k, v: (B, Hkv, Tk, D) keys and values, ``Hq % Hkv == 0``.
        q_index: (Tq,) index of each query inside the key sequence (``past + arange(Tq)``).
        key_valid: (B, Tk) bool, False at padding keys; None means all valid.
        window: a query at index i sees keys i - window + 1 .. i; None means no window.
    Returns:
        (B, Hq, Tq, D) in q's dtype.
    """
    tk = k.shape[-2]
    k_index = torch.arange(tk, device=q.device)
    mask = k_index[None, :] <= q_index[:, None]  # (Tq, Tk)
    if window is not None:
        mask = mask & (q_index[:, None] - k_index[None, :] < window)
    mask = mask.unsqueeze(0)
    if key_valid is not None:
        mask = mask & key_valid[:, None, :].bool()
        # A padding query may see no key at all; let it see itself so softmax stays finite.
        # Its output is never used (its label is ignored and no real token attends to it).
        own = torch.zeros_like(mask)
        own[:, torch.arange(q_index.numel(), device=q.device), q_index] = True
        mask = mask | (own & ~mask.any(-1, keepdim=True))
    # The same masked core as the CPU ops (GQA without repeated K/V, fp32 softmax), so that
    # decoding steps compute what the prefill did.
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return attend_chunk(q, k, v, mask.expand(q.shape[0], -1, -1), scale)
