"""Routing metadata on the GPU: compaction of routed positions without host synchronisation."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..utils import doc_start_positions


class Routing(NamedTuple):
    """Per batch row (all int32, on the device of `route`).

    order:  (B, T) a permutation of positions: the routed ones in position order in
            `order[:, :count]`, then the unrouted ones (their output rows are zero-filled).
            With queries at the end of a longer key sequence, key positions (query + offset).
    count:  (B,) number of routed positions.
    cum:    (B, T + 1) routed positions before each position (`cum[:, t]` counts `< t`).
    start:  (B, TK) first position of each key position's document.
    end:    (B, TK) last position of each key position's document.
    """

    order: torch.Tensor
    count: torch.Tensor
    cum: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor


def doc_end_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    B, T = doc_ids.shape
    pos = torch.arange(T, device=doc_ids.device, dtype=torch.int32).expand(B, T)
    last = torch.ones_like(doc_ids, dtype=torch.bool)
    if T > 1:
        last[:, :-1] = doc_ids[:, :-1] != doc_ids[:, 1:]
    marked = torch.where(last, pos, torch.full_like(pos, T - 1))
    return torch.flip(torch.cummin(torch.flip(marked, [1]), dim=1).values, [1]).to(torch.int32)


def build_routing(
    route: torch.Tensor, doc_ids: torch.Tensor | None, num_keys: int | None = None
) -> Routing:
    """`route (B, T)` over the queries; `doc_ids (B, TK)` over the keys. With `TK > T` (given
    by `doc_ids` or `num_keys`) the queries are the last T key positions."""
    B, T = route.shape
    TK = doc_ids.shape[1] if doc_ids is not None else (num_keys or T)
    dev = route.device
    r = route.to(torch.int32)
    cum = torch.zeros(B, T + 1, dtype=torch.int32, device=dev)
    torch.cumsum(r, dim=1, out=cum[:, 1:])
    count = cum[:, T].contiguous()
    pos = torch.arange(T, device=dev, dtype=torch.int32).expand(B, T)
    # Routed position t goes to slot cum[t]; unrouted t to count + (number of unrouted < t).
    slot = torch.where(route, cum[:, :T], count[:, None] + pos - cum[:, :T])
    order = torch.empty(B, T, dtype=torch.int32, device=dev)
    order.scatter_(1, slot.to(torch.int64), pos.contiguous())
    if TK != T:
        order += TK - T
    if doc_ids is None:
        start = torch.zeros(B, TK, dtype=torch.int32, device=dev)
        end = torch.full((B, TK), TK - 1, dtype=torch.int32, device=dev)
    else:
        start = doc_start_positions(doc_ids).contiguous()
        end = doc_end_positions(doc_ids)
    return Routing(order, count, cum, start, end)
