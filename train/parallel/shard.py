"""What each rank of an SP group holds of a packed row (`shard_batch`), and the router's
outputs of the whole row back on every rank (`gather_router_outputs`)."""

from __future__ import annotations

import torch

from train.parallel.comm import gather_sequence
from train.parallel.topology import TopologyError


def shard_batch(batch: dict, shifted_labels: torch.Tensor, sp_rank: int, sp: int) -> dict:
    """A full packed row -> this rank's contiguous 1/N slice.

    input_ids, position_ids: sliced. `shifted_labels`: the whole row's labels shifted by one
    (`train.losses.shift_labels`: position t predicts token t + 1, also across the slice
    boundary), sliced into `shift_labels`.
    `doc_ids`: this slice of the whole row's document ids (numbered on the whole row, so
    that the attention wrapper's all-gather gives the row's). `router_mask` (valid tokens:
    labels not -100) is the whole row's: the router statistics are the row's."""
    from kernels.utils import doc_ids_from_position_ids

    seq = batch["input_ids"].shape[1]
    if seq % sp:
        raise TopologyError(f"train.sequence_parallel: must divide the sequence length ({seq}), got {sp}")
    part = slice(sp_rank * (seq // sp), (sp_rank + 1) * (seq // sp))
    labels = batch["labels"]
    return {
        "input_ids": batch["input_ids"][:, part],
        "position_ids": batch["position_ids"][:, part],
        "shift_labels": shifted_labels[:, part],
        "doc_ids": doc_ids_from_position_ids(batch["position_ids"])[:, part],
        "router_mask": labels != -100,
    }


def gather_router_outputs(probs, routes, group) -> tuple[tuple, tuple]:
    """Router probabilities and decisions of every L2A layer for the whole row."""
    probs = tuple(gather_sequence(p, group) for p in probs)
    routes = tuple(gather_sequence(d.to(torch.uint8), group).bool() for d in routes)
    return probs, routes
