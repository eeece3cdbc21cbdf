"""The local (sliding-window) branch under sequence parallelism without all-to-alls.

Under DeepSpeed-Ulysses every attention call all-to-alls q, k, v from sequence slices to
head groups and the output back: four exchanges of about `(2 Hq + 2 Hkv) D` values per token
and layer. The local branch does not need the whole sequence: a query sees at most the
`window - 1` keys before it. So each rank keeps its slice and all its heads, receives the
last `window - 1` keys and values before its slice (the "halo", from the ranks before it in
the group) and runs the unchanged kernel on `[halo; slice]`. What crosses the wire per layer
is each rank's last `min(window - 1, T/N)` tokens of k and v (and document ids), sent only to
the ranks whose halo needs them (the next one, or the next few when the window is longer
than a slice), instead of the whole slice's q, k, v and output.

The kernels take queries and keys of one length (FlashAttention-4's and FlexAttention's
paths), so the halo positions get zero queries whose outputs are dropped: `window - 1`
extra query rows per rank (6% of a 64K slice at window 4095), no gradient from them.

Gradients: the tails travel by `train.parallel.comm.exchange` (an all-to-all with split
sizes, zero towards the ranks that need nothing), whose backward sends each received tail's
gradient back to its sender. Activation checkpointing recomputes the layer, and with it this
exchange, on every rank alike.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from train.parallel.comm import exchange


def halo_from_tails(tails: list[torch.Tensor], rank: int, width: int) -> torch.Tensor:
    """The `width` positions (dim 2) just before rank `rank`'s slice, from every rank's tail
    (its last `min(width, slice)` positions, or nothing from a rank too far back to be
    needed): the tails of the ranks before it, in order, cut to the last `width` (fewer at
    the start of the row; empty on rank 0)."""
    if rank == 0:
        return tails[0][:, :, :0]
    return torch.cat(tails[:rank], dim=2)[:, :, -width:]


class HaloWindowCore:
    """Replaces the local branch's attention core (`L2ABranchAttention.attention_core`)
    under sequence parallelism over `group`: the window computed on this rank's slice, all
    heads, with the halo of keys and values from the ranks before it. Not an nn.Module."""

    def __init__(self, inner, group):
        self.inner = inner
        self.group = group

    def __call__(self, q, k, v, route, window, doc_ids, scale, backend):
        if route is not None or window is None:
            raise ValueError("HaloWindowCore: the local (sliding-window) branch only")
        rank, n = dist.get_rank(self.group), dist.get_world_size(self.group)
        width = window - 1
        if n == 1 or width == 0:
            return self.inner(q, k, v, route, window, doc_ids, scale, backend)
        local, hkv = k.shape[2], k.shape[1]
        if doc_ids is None:  # one document: ids equal on every rank
            doc_ids = torch.zeros(k.shape[0], local, dtype=torch.long, device=k.device)
        tail = min(width, local)  # the same on every rank: all slices have one length
        reach = math.ceil(width / local)  # how many slices before it a halo spans

        def to_next(x):
            """This rank's tail `x (B, C, tail, ...)` to the `reach` ranks after it; returns
            what each rank sent here (empty from ranks whose tail this halo does not need)."""
            none = x[:, :, :0]
            send = [x if rank < j <= rank + reach else none for j in range(n)]
            recv = [x.shape if rank - reach <= i < rank else none.shape for i in range(n)]
            return exchange(send, recv, self.group)

        halo = halo_from_tails(to_next(torch.cat([k[:, :, -tail:], v[:, :, -tail:]], dim=1)), rank, width)
        halo_docs = halo_from_tails(to_next(doc_ids[:, None, -tail:]), rank, width)[:, 0]
        h = halo.shape[2]
        k_ext = torch.cat([halo[:, :hkv], k], dim=2)
        v_ext = torch.cat([halo[:, hkv:], v], dim=2)
        q_ext = torch.cat([q.new_zeros(q.shape[0], q.shape[1], h, q.shape[3]), q], dim=2)
        o = self.inner(q_ext, k_ext, v_ext, None, window, torch.cat([halo_docs, doc_ids], dim=1),
                       scale, backend)
        return o[:, :, h:]
