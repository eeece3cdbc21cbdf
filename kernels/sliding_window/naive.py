"""Pure-PyTorch causal sliding-window attention with document masking."""

from __future__ import annotations

import torch

from ..masked_attention import attend_chunk, maybe_checkpointed, query_chunk_size


def _window_chunk(q, k, v, qpos, kpos, qdoc, kdoc, window, scale):
    diff = qpos[:, None] - kpos[None, :]
    mask = ((diff >= 0) & (diff < window))[None]
    if qdoc is not None:
        mask = mask & (kdoc[:, None, :] == qdoc[:, :, None])
    return attend_chunk(q, k, v, mask, scale)


def sliding_window_attention_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    doc_ids: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Query `i` attends to keys `max(i - window + 1, doc start) .. i`.

    k/v may be longer than q: query `i` is then key position `Tk - Tq + i` (`doc_ids` label
    the keys). Query-chunked: a chunk of `n` queries reads `window + n - 1` keys, so memory
    is O(n * (window + n)) whatever the sequence length.
    """
    B, Hq, T, D = q.shape
    off = k.shape[2] - T
    if scale is None:
        scale = D**-0.5
    n_chunk = query_chunk_size(Hq, B, min(window, k.shape[2]), keys_grow=True)
    pieces = []
    for s in range(0, T, n_chunk):
        e = min(T, s + n_chunk)
        lo = max(0, off + s - window + 1)
        qpos = torch.arange(off + s, off + e, device=q.device)
        kpos = torch.arange(lo, off + e, device=q.device)
        qdoc = doc_ids[:, off + s : off + e] if doc_ids is not None else None
        kdoc = doc_ids[:, lo : off + e] if doc_ids is not None else None
        pieces.append(
            maybe_checkpointed(
                _window_chunk,
                q[:, :, s:e],
                k[:, :, lo : off + e],
                v[:, :, lo : off + e],
                qpos,
                kpos,
                qdoc,
                kdoc,
                window,
                scale,
            )
        )
    return torch.cat(pieces, dim=2)
