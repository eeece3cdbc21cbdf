"""Document boundaries of packed rows, derived from position ids that restart at 0 at
every document (what ``build_dataloader`` emits): document ids for masks and kernels,
``cu_seqlens`` for varlen (FlashAttention-style) kernels, and a dense mask for eager/SDPA."""

from __future__ import annotations

import torch


def doc_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """Bool ``(B, T)``: True where a document starts (``pos[t] != pos[t-1] + 1``, and t = 0)."""
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    return starts


def doc_ids_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` int64 document index within each row, counting from 0."""
    return doc_starts(position_ids).long().cumsum(-1) - 1


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cumulative document lengths over the flattened ``(B * T)`` tokens -> (int32
    ``(num_docs + 1,)``, longest document); documents never cross rows."""
    flat = doc_starts(position_ids).reshape(-1)
    starts = torch.nonzero(flat, as_tuple=False).flatten()
    total = torch.tensor([flat.numel()], device=starts.device)
    cu = torch.cat([starts, total]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max().item())


def document_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """Bool ``(B, 1, T, T)``, True where query ``i`` may attend key ``j``:
    ``j <= i`` and both in the same document."""
    ids = doc_ids_from_position_ids(position_ids)
    t = position_ids.shape[-1]
    causal = torch.ones(t, t, dtype=torch.bool, device=position_ids.device).tril()
    return ((ids[:, :, None] == ids[:, None, :]) & causal)[:, None]
