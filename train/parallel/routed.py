"""The routed attention core under sequence parallelism (`l2a.routed_projections`): each
rank's compacted routed queries (a count that differs per rank) to the rank of their head
group by an uneven all-to-all, the original core on the whole row, the output rows back."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from train.parallel.comm import exchange, gather_sequence


@dataclass
class RoutedRows:
    """The routed query rows of a whole row, as the ranks of a group hold them: rank i's
    `counts[i]` compacted rows (`routed_slots` of its slice) one after the other, at key
    positions `i * T/N + slot`. `order` (None when no row is padding) puts the routed rows
    first, in position order, and the padding after them: the layout `routed_slots` gives
    a whole row, which the core's backends need (FlexAttention's block bounds take the
    positions as ascending; its padding stand-in is the last position)."""

    slots: torch.Tensor  # (B, S) key positions, in `order`
    valid: torch.Tensor  # (B, S) routed (not padding), in `order`
    counts: list[int]  # rows per rank (the largest routed count of its slice)
    order: torch.Tensor | None  # (B, S): rank-segment row of each row above


def whole_row_routed_rows(route: torch.Tensor, n: int) -> RoutedRows:
    """`route (B, T)` of the whole row, split in `n` contiguous slices. One host sync."""
    from kernels.flash.routing import build_routing

    B, T = route.shape
    local = T // n
    seg = route.view(B, n, local)
    per_slice = seg.sum(-1)  # (B, n)
    table = per_slice.tolist()
    counts = [max(row[i] for row in table) for i in range(n)]
    # A slice's slots as its rank's `routed_slots` lists them (the same function of the route).
    pos = build_routing(seg.reshape(B * n, local), None).order.view(B, n, local).long()
    arange = torch.arange(max(counts, default=0), device=route.device)
    slots = torch.cat([pos[:, i, :c] + i * local for i, c in enumerate(counts)], dim=1)
    valid = torch.cat([arange[None, :c] < per_slice[:, i, None] for i, c in enumerate(counts)], dim=1)
    if all(row[i] == c for row in table for i, c in enumerate(counts)):
        return RoutedRows(slots, valid, counts, None)  # no padding (always so for one row)
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
    return RoutedRows(slots.gather(1, order), valid.gather(1, order), counts, order)


def _rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, H, S, D), index (B, S): x[b, :, index[b]]."""
    B, H, _, D = x.shape
    return x.gather(2, index[:, None, :, None].expand(B, H, index.shape[1], D))


class RoutedUlyssesCore:
    """Replaces one branch's routed attention core (`routed_projections`): this rank holds
    compacted queries `q_c (B, Hq, R_i, D)` of its slice's routed tokens (R_i differs per
    rank) and keys/values `(B, Hkv, T/N, D)` of its slice. Keys and values go to the head
    groups as in Ulysses (replicated when fewer than N), every rank's query rows of head
    group j to rank j, which runs the original core on the whole row for Hq/N heads; the
    output rows go back. Not an nn.Module (the model's state dict is unchanged)."""

    def __init__(self, inner, group):
        self.inner, self.group = inner, group

    def __call__(self, q_c, k, v, route, doc_ids, scale, backend, slots, valid):
        n, rank = dist.get_world_size(self.group), dist.get_rank(self.group)
        B, Hq, R, D = q_c.shape
        local = k.shape[2]
        if route.shape[1] != local:
            raise ValueError("sequence parallelism: routed queries must be all the keys' (no KV cache)")
        route = gather_sequence(route.to(torch.uint8), self.group).bool()
        if doc_ids is not None:
            doc_ids = gather_sequence(doc_ids, self.group)
        rows = whole_row_routed_rows(route, n)
        if rows.counts[rank] != R or slots.shape[1] != R:
            raise RuntimeError(f"sequence parallelism: rank {rank} holds {R} routed rows, "
                               f"its slice of the route says {rows.counts[rank]}")
        k, v = self._whole_sequence(k), self._whole_sequence(v)
        hq = Hq // n
        # Head group j of every rank's rows to rank j; rank i's rows arrive as segment i.
        parts = exchange([q_c[:, j * hq:(j + 1) * hq] for j in range(n)],
                         [(B, hq, c, D) for c in rows.counts], self.group)
        q = torch.cat(parts, dim=2)
        if rows.order is not None:
            q = _rows(q, rows.order)
        o = self.inner(q, k, v, route, doc_ids, scale, backend, rows.slots, rows.valid)
        if rows.order is not None:
            o = _rows(o, torch.argsort(rows.order, dim=1))
        back = exchange(list(o.split(rows.counts, dim=2)), [(B, hq, R, D)] * n, self.group)
        return torch.cat(back, dim=1)

    def _whole_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Hkv, T/N, D) -> (B, Hkv/N, T, D) of this rank's head group (Hkv < N: the one
        KV head its query heads use, replicated as DeepSpeed does)."""
        n = dist.get_world_size(self.group)
        B, H, local, D = x.shape
        if H < n:
            x = x.repeat_interleave(n // H, dim=1)
            H = n
        h = H // n
        parts = exchange([x[:, j * h:(j + 1) * h] for j in range(n)], [(B, h, local, D)] * n, self.group)
        return torch.cat(parts, dim=2)
