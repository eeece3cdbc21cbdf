"""The differentiable collectives of sequence parallelism over an SP group: the all-gather
along the sequence, and the uneven all-to-all with split sizes (routed queries, halos)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


class _GatherSequence(torch.autograd.Function):
    """All-gather along the sequence (dim 1) over the SP group. Every rank then computes the
    same function of the whole row; backward keeps this rank's slice of the gradient (not
    a sum), so the ranks' gradients add up to the gradient of that one function."""

    @staticmethod
    def forward(ctx, x, group):
        n, r = dist.get_world_size(group), dist.get_rank(group)
        parts = [torch.empty_like(x) for _ in range(n)]
        dist.all_gather(parts, x.contiguous(), group=group)
        ctx.part = slice(r * x.shape[1], (r + 1) * x.shape[1])
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad):
        return grad[:, ctx.part], None


def gather_sequence(x: torch.Tensor, group) -> torch.Tensor:
    if x.requires_grad:
        return _GatherSequence.apply(x, group)
    with torch.no_grad():
        return _GatherSequence.apply(x, group)


class _AllToAll(torch.autograd.Function):
    """Uneven all-to-all of a flat tensor over the SP group: `send_sizes[j]` elements to
    rank j, `recv_sizes[i]` from rank i. Backward is the reverse exchange. One flat
    `all_to_all_single` with split sizes: gloo's list form needs equal sizes."""

    @staticmethod
    def forward(ctx, flat, send_sizes, recv_sizes, group):
        ctx.sizes, ctx.group = (send_sizes, recv_sizes), group
        out = flat.new_empty(sum(recv_sizes))
        dist.all_to_all_single(out, flat.contiguous(), recv_sizes, send_sizes, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        send_sizes, recv_sizes = ctx.sizes
        out = grad.new_empty(sum(send_sizes))
        dist.all_to_all_single(out, grad.contiguous(), send_sizes, recv_sizes, group=ctx.group)
        return out, None, None, None


def exchange(send: list[torch.Tensor], recv_shapes: list[tuple], group) -> list[torch.Tensor]:
    """`send[j]` to rank j of `group`; returns what rank i sent here, shaped `recv_shapes[i]`
    (differentiable: the gradient of a received tensor goes back to its sender)."""
    flat = torch.cat([t.reshape(-1) for t in send])
    recv_sizes = [math.prod(shape) for shape in recv_shapes]
    out = _AllToAll.apply(flat, [t.numel() for t in send], recv_sizes, group)
    return [part.view(shape) for part, shape in zip(out.split(recv_sizes), recv_shapes)]
