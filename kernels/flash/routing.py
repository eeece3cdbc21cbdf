"""Routing metadata on the GPU: compaction of routed positions without host synchronisation."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..utils import doc_start_positions


class Routing(NamedTuple):
    """Per batch row (all int32, on the device of `route`).

    order:  (B, T) a permutation of positions: the routed ones in position order in
            `order[:, :count]`, then the unrouted ones (their output rows are zero-filled).
    count:  (B,) number of routed positions.
    cum:    (B, T + 1) routed positions before each position (`cum[:, t]` counts `< t`).
    start:  (B, T) first position of each position's document.
    end:    (B, T) last position of each position's document.
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


def build_routing(route: torch.Tensor, doc_ids: torch.Tensor | None) -> Routing:
    B, T = route.shape
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
    if doc_ids is None:
        start = torch.zeros(B, T, dtype=torch.int32, device=dev)
        end = torch.full((B, T), T - 1, dtype=torch.int32, device=dev)
    else:
        start = doc_start_positions(doc_ids).contiguous()
        end = doc_end_positions(doc_ids)
    return Routing(order, count, cum, start, end)
