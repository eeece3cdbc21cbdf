"""Public sliding-window attention op: input checks and backend dispatch."""

from __future__ import annotations

import torch

from ..backends import resolve
from ..decode import DECODE_MAX_QUERIES, decode_attention
from ..utils import check_doc_ids, check_qkv, default_scale
from .naive import sliding_window_attention_naive


def check_window(window) -> int:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window: expected an int >= 1, got {window!r}")
    return window


def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    doc_ids: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Causal sliding-window attention with document masking (the L2A local branch).

    Args:
        q: `(B, Hq, T, D)`; k, v: `(B, Hkv, Tk, D)` with `Hq % Hkv == 0` (never expanded),
            `Tk >= T`: with `Tk > T` the queries are the last T key positions (a chunk or
            decoding step against a KV cache; forward only on the Triton path).
        window: query `i` sees keys `max(i - window + 1, doc start) .. i`.
        doc_ids: optional `(B, Tk)` int ids of contiguous packed documents over the keys
            (None: one doc); padding is one more document.
        scale: softmax scale, default `D ** -0.5`.
        backend: `auto`, `torch`, `triton`, `flex` or `fa4` (kernels/backends.py).

    Returns:
        `(B, Hq, T, D)` in q's dtype.
    """
    B, Hq, Hkv, T, D = check_qkv(q, k, v)
    window = check_window(window)
    check_doc_ids(doc_ids, B, k.shape[2], q.device)
    scale = default_scale(scale, D)
    backend = resolve(backend, q)
    if backend == "torch":
        return sliding_window_attention_naive(q, k, v, window, doc_ids, scale)
    if T < k.shape[2] and T <= DECODE_MAX_QUERIES:
        return decode_attention(q, k, v, window, doc_ids, scale)
    if backend == "fa4" and T == k.shape[2]:
        from .fa4 import sliding_window_attention_fa4

        return sliding_window_attention_fa4(q, k, v, window, doc_ids, scale)
    if backend == "flex" and T == k.shape[2]:
        from .flex import sliding_window_attention_flex

        return sliding_window_attention_flex(q, k, v, window, doc_ids, scale)
    from .gpu import sliding_window_attention_gpu

    return sliding_window_attention_gpu(q, k, v, window, doc_ids, scale)
