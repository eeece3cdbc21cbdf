"""Sliding-window attention through FlashAttention-4 (`flash_attn.cute`, package
`flash-attn-4`): `window_size=(window - 1, 0)` with `causal=True`; packed documents through
its varlen entry (the batch rows flattened, one sequence per document). GQA is native.
Imported only when this backend is chosen (kernels/backends.py)."""

from __future__ import annotations

import torch


def doc_cu_seqlens(doc_ids: torch.Tensor) -> torch.Tensor:
    """Cumulative document lengths over the flattened `(B * T)` tokens, int32 `(n_docs + 1,)`:
    a document starts at `t = 0` of every row and wherever the id changes."""
    B, T = doc_ids.shape
    start = torch.ones_like(doc_ids, dtype=torch.bool)
    start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.nonzero(start.flatten(), as_tuple=False).squeeze(1)  # host sync: n_docs
    end = torch.tensor([B * T], device=doc_ids.device, dtype=first.dtype)
    return torch.cat([first, end]).to(torch.int32)


def sliding_window_attention_fa4(q, k, v, window: int, doc_ids, scale: float) -> torch.Tensor:
    from flash_attn.cute import flash_attn_func, flash_attn_varlen_func

    B, Hq, T, D = q.shape
    # FlashAttention-4's layout is (B, T, H, D); the layer's projections produce exactly
    # that before their transpose, so these are views, not copies, in the model.
    qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    # A window covering the whole row is plain causal attention: say so (left None), because
    # FlashAttention-4 runs any left window on its local path (smaller key tiles on sm90:
    # `_tile_size_fwd_sm90`), which the dense-path step's window-T call would otherwise take.
    win = (window - 1 if window < T else None, 0)
    if doc_ids is None:
        o = flash_attn_func(qt, kt, vt, softmax_scale=scale, causal=True, window_size=win)[0]
    else:
        cu = doc_cu_seqlens(doc_ids)
        flat = [t.reshape(B * T, t.shape[2], D) for t in (qt, kt, vt)]
        o = flash_attn_varlen_func(
            *flat, cu_seqlens_q=cu, cu_seqlens_k=cu, softmax_scale=scale, causal=True, window_size=win
        )[0]
        o = o.view(B, T, Hq, D)
    return o.transpose(1, 2)
