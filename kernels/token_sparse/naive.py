"""Pure-PyTorch token-sparse causal attention: the CPU path and the kernels' reference."""

from __future__ import annotations

import torch

from ..masked_attention import attend_chunk, maybe_checkpointed, query_chunk_size
from ..utils import doc_start_positions


def _routed_chunk(q, k, v, qpos, kpos, qdoc, kdoc, scale):
    mask = kpos[None, :] <= qpos[:, None]
    if qdoc is not None:
        mask = mask & (kdoc[None, :] == qdoc[:, None])
    return attend_chunk(q, k, v, mask[None], scale)


def token_sparse_attention_naive(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    route: torch.Tensor,
    doc_ids: torch.Tensor | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal attention of the routed queries only; see `kernels.token_sparse_attention`.

    Only routed queries are computed (gathered per batch row, in position order, in chunks
    of bounded score memory); each chunk reads keys from its first query's document start
    to its last query. Unrouted rows of the output are exact zeros and get zero gradient.
    k/v may be longer than q: query `i` is then key position `Tk - Tq + i`.
    """
    B, Hq, T, D = q.shape
    off = k.shape[2] - T
    if scale is None:
        scale = D**-0.5
    starts = doc_start_positions(doc_ids) if doc_ids is not None else None
    n_chunk = query_chunk_size(Hq, 1, k.shape[2], keys_grow=False)
    rows = []
    for b in range(B):
        idx = torch.nonzero(route[b], as_tuple=False).squeeze(1)
        if idx.numel() == 0:
            # Empty gathers keep the output attached to q, k and v (zero gradients, not None).
            G = Hq // k.shape[1]
            empty = q[b, :, idx] + (k[b, :, idx] + v[b, :, idx]).repeat_interleave(G, dim=0)
            rows.append(torch.zeros_like(q[b]).index_copy(1, idx, empty))
            continue
        pieces = []
        for qidx in idx.split(n_chunk):
            qpos = qidx + off
            first, last = int(qpos[0]), int(qpos[-1])
            lo = int(starts[b, first]) if starts is not None else 0
            kpos = torch.arange(lo, last + 1, device=q.device)
            qdoc = doc_ids[b, qpos] if doc_ids is not None else None
            kdoc = doc_ids[b, lo : last + 1] if doc_ids is not None else None
            o = maybe_checkpointed(
                _routed_chunk,
                q[b : b + 1, :, qidx],
                k[b : b + 1, :, lo : last + 1],
                v[b : b + 1, :, lo : last + 1],
                qpos,
                kpos,
                qdoc,
                kdoc,
                scale,
            )
            pieces.append(o[0])
        rows.append(torch.zeros_like(q[b]).index_copy(1, idx, torch.cat(pieces, dim=1)))
    return torch.stack(rows)
