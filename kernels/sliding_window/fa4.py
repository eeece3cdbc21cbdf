"""Sliding-window attention through FlashAttention-4 (`flash_attn.cute`, package
`flash-attn-4`): `window_size=(window - 1, 0)` with `causal=True`; packed documents through
its varlen entry (the batch rows flattened, one sequence per document). GQA is native.
Imported only when this backend is chosen (kernels/backends.py)."""

from __future__ import annotations

import functools
import inspect

import torch

from ..utils import derived


def doc_cu_seqlens(doc_ids: torch.Tensor) -> torch.Tensor:
    """Cumulative document lengths over the flattened `(B * T)` tokens, int32 `(n_docs + 1,)`:
    a document starts at `t = 0` of every row and wherever the id changes.

    The number of documents is a shape, so this reads the device (one host sync): done once
    per `doc_ids` tensor, which every layer of a forward and its recomputation share."""
    return derived(doc_ids, "cu_seqlens", _doc_cu_seqlens)


def _doc_cu_seqlens(doc_ids: torch.Tensor) -> torch.Tensor:
    B, T = doc_ids.shape
    start = torch.ones_like(doc_ids, dtype=torch.bool)
    start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.nonzero(start.flatten(), as_tuple=False).squeeze(1)  # host sync: n_docs
    end = first.new_full((1,), B * T)  # a fill on the device, no host-to-device copy
    return torch.cat([first, end]).to(torch.int32)


@functools.cache
def _takes_max_seqlen(fn) -> bool:
    """Whether this flash-attn-4 release's varlen entry takes `max_seqlen_q/k`."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "max_seqlen_q" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


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
        # The row length bounds every document's: a max_seqlen of the shape, not of this
        # batch's packing (FlashAttention-4 picks tiles, and so compiled kernels, from it).
        bound = {"max_seqlen_q": T, "max_seqlen_k": T} if _takes_max_seqlen(flash_attn_varlen_func) else {}
        o = flash_attn_varlen_func(
            *flat, cu_seqlens_q=cu, cu_seqlens_k=cu, softmax_scale=scale, causal=True,
            window_size=win, **bound
        )[0]
        o = o.view(B, T, Hq, D)
    return o.transpose(1, 2)
