"""Attention of a few queries at the end of a long key sequence (decoding against a KV cache).

The compacted-query kernels give each program a block of queries of one KV head and walk
the keys one tile at a time: with one query per row they would run `B * Hkv` programs over
the whole cache and leave most of the GPU idle. Here the query heads of a KV group are
folded into the query axis (`(B, Hkv, G * Tq, D)`, K/V never expanded) and SDPA does the
rest (flash decoding when no mask is needed, the memory-efficient kernel with a `Tq x Tk`
boolean mask otherwise). Memory: O(Tq x Tk) for the mask, no score matrix of the context.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from triton.compiler.errors import CompilationError
from triton.runtime.errors import OutOfResources

from .fallbacks import record_fallback

# Up to this many queries per row a call against a longer key sequence takes this path on
# CUDA; longer chunks go through the kernels with a query offset.
DECODE_MAX_QUERIES = 16


def visible_keys(
    tq: int, tk: int, window: int | None, doc_ids: torch.Tensor | None, device
) -> torch.Tensor | None:
    """`(B or 1, Tq, Tk)` bool: query `i` (key position `tk - tq + i`) sees key `j`; None when
    every query sees every key (one query, no document boundary, window not binding)."""
    if tq == 1 and doc_ids is None and (window is None or window >= tk):
        return None
    qpos = torch.arange(tk - tq, tk, device=device)
    kpos = torch.arange(tk, device=device)
    mask = kpos[None, :] <= qpos[:, None]
    if window is not None:
        mask = mask & (qpos[:, None] - kpos[None, :] < window)
    mask = mask[None]
    if doc_ids is not None:
        mask = mask & (doc_ids[:, None, :] == doc_ids[:, tk - tq :, None])
    return mask


def decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int | None,
    doc_ids: torch.Tensor | None,
    scale: float,
    route: torch.Tensor | None = None,
) -> torch.Tensor:
    """q `(B, Hq, Tq, D)` at the last Tq of the `Tk` key positions of k/v `(B, Hkv, Tk, D)`;
    `window` None: causal over all keys. `route (B, Tq)`: rows of unrouted queries are zero.
    Returns `(B, Hq, Tq, D)` in q's dtype."""
    tq, tk = q.shape[2], k.shape[2]
    return _folded_sdpa(q, k, v, visible_keys(tq, tk, window, doc_ids, q.device), scale, route)


def _folded_sdpa(q, k, v, visible, scale, route):
    """SDPA with the query heads of a KV group folded into the query axis: q `(B, Hq, Tq,
    D)`, `visible (B or 1, Tq, Tk)` bool or None, unrouted rows (`route (B, Tq)`) zeroed."""
    B, Hq, tq, D = q.shape
    Hkv, tk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    qf = q.reshape(B, Hkv, G * tq, D)  # rows ordered (head in group, query)
    mask = visible
    if mask is not None and tq == 1:
        mask = mask[:, None]  # (B, 1, 1, Tk): broadcast over heads and group rows
    elif mask is not None:
        mask = mask[:, None, None].expand(mask.shape[0], 1, G, tq, tk).reshape(-1, 1, G * tq, tk)
    o = F.scaled_dot_product_attention(qf, k, v, attn_mask=mask, scale=scale)
    o = o.reshape(B, Hq, tq, D)
    if route is not None:
        o = o * route[:, None, :, None].to(o.dtype)
    return o


DECODE_SPLIT_OP = "decode.split_kv"
DECODE_BACKENDS = ("auto", "torch", "triton")


def masked_decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    visible: torch.Tensor,
    scale: float,
    route: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Decoding attention against fixed-size key buffers (a static cache): q `(B, Hq, Tq,
    D)`, k/v `(B, Hkv, Tk, D)` in any order (a ring buffer), `visible (B, Tq, Tk)` bool says
    which keys each query sees (every query must see one: its own key). `route (B, Tq)`
    bool, a device tensor: rows of unrouted queries are exactly zero, with no host
    synchronisation (the shapes do not depend on it). Returns `(B, Hq, Tq, D)`.

    `backend`: `triton` the split-KV kernels (kernels/decode_split.py; an unrouted query
    reads no key there), `torch` SDPA (`masked_decode_attention_sdpa`, the reference),
    `auto` (or any of the training backends' names: `fa4`, `flex`) the kernels on CUDA,
    SDPA elsewhere. On CUDA a call the kernels cannot take runs SDPA and is recorded as a
    fallback (kernels/fallbacks.py), never silently."""
    if backend not in DECODE_BACKENDS:
        backend = "auto"  # the training-kernel choices (fa4, flex) have no decoding variant
    if backend == "torch" or (backend == "auto" and not q.is_cuda):
        return masked_decode_attention_sdpa(q, k, v, visible, scale, route)
    from .decode_split import split_kv_decode_attention, split_kv_unsupported

    reason = split_kv_unsupported(q, k, v, visible, route)
    if reason is None:
        try:
            return split_kv_decode_attention(q, k, v, visible, scale, route)
        except (OutOfResources, CompilationError) as exc:
            if backend == "triton":
                raise
            record_fallback(DECODE_SPLIT_OP, "TRITON", "SDPA", exc)
    elif backend == "triton":
        raise ValueError(f"backend='triton' (decoding): {reason}")
    else:
        record_fallback(DECODE_SPLIT_OP, "TRITON", "SDPA", ValueError(reason))
    return masked_decode_attention_sdpa(q, k, v, visible, scale, route)


def masked_decode_attention_sdpa(q, k, v, visible, scale: float, route=None) -> torch.Tensor:
    """`masked_decode_attention` through SDPA with the boolean mask (the reference, and the
    path on the CPU): the query heads of a KV group folded into the query axis."""
    return _folded_sdpa(q, k, v, visible, scale, route)
