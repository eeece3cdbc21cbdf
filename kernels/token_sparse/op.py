"""Public token-sparse attention op: input checks and backend dispatch."""

from __future__ import annotations

import torch

from ..backends import resolve
from ..decode import DECODE_MAX_QUERIES, decode_attention
from ..utils import check_doc_ids, check_qkv, check_route, default_scale
from .naive import token_sparse_attention_naive


def token_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    route: torch.Tensor,
    doc_ids: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Causal attention computed only for routed queries, against every key.

    Args:
        q: `(B, Hq, T, D)` queries.
        k, v: `(B, Hkv, Tk, D)` keys / values, `Hq % Hkv == 0`; query head `h` reads KV head
            `h // (Hq // Hkv)`. K/V are never expanded. `Tk >= T`: with `Tk > T` the queries
            are the last T key positions (a chunk or decoding step against a KV cache;
            forward only on the Triton path).
        route: `(B, T)` bool, the router decision per token (shared by all heads).
        doc_ids: optional `(B, Tk)` int ids of contiguous packed documents over the keys; a
            query at `i` sees key `j` iff `j <= i` and `doc_ids[j] == doc_ids[i]`. None: one
            document. Padding is one more document.
        scale: softmax scale, default `D ** -0.5`.
        backend: `auto`, `torch`, `triton`, `flex` or `fa4` (kernels/backends.py).

    Returns:
        `(B, Hq, T, D)` in q's dtype; rows of unrouted positions are exactly zero.
        Gradients: dq (zero at unrouted positions), dk and dv for every key. The Triton
        backward uses no atomics: it is bitwise deterministic (unless the launch config
        opts into `atomic_dq`, kernels/flash/config.py).
    """
    B, Hq, Hkv, T, D = check_qkv(q, k, v)
    check_route(route, B, T, q.device)
    check_doc_ids(doc_ids, B, k.shape[2], q.device)
    scale = default_scale(scale, D)
    backend = resolve(backend, q, token_sparse=True)
    if backend == "torch":
        return token_sparse_attention_naive(q, k, v, route, doc_ids, scale)
    if T < k.shape[2] and T <= DECODE_MAX_QUERIES:
        return decode_attention(q, k, v, None, doc_ids, scale, route)
    if backend in ("flex", "fa4") and T == k.shape[2]:
        from .compact import gather_rows, scatter_rows, routed_slots
        from .flex import routed_query_attention_flex

        slots, valid = routed_slots(route)
        o_c = routed_query_attention_flex(
            gather_rows(q, slots), k, v, slots, valid, doc_ids, scale, flash=backend == "fa4"
        )
        return scatter_rows(o_c, slots, T)
    from .triton_op import token_sparse_attention_triton

    return token_sparse_attention_triton(q, k, v, route, doc_ids, scale)
