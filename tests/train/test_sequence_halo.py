"""The halo of the local branch under sequence parallelism (train/parallel/halo.py): which
positions before a rank's slice it gets. The exchange and its gradients are checked against
the whole row in tests/train/test_sequence_parallel.py (2 gloo processes)."""

from __future__ import annotations

import torch

from train.parallel.halo import halo_from_tails


def _tails(slice_len: int, ranks: int, width: int) -> list[torch.Tensor]:
    """Every rank's tail, labelled by the global position of each entry (dim 2)."""
    tail = min(width, slice_len)
    return [torch.arange(r * slice_len + slice_len - tail, (r + 1) * slice_len,
                         dtype=torch.float32).view(1, 1, -1) for r in range(ranks)]


def test_halo_is_the_window_before_the_slice():
    # Slices of 12 positions, 4 ranks: rank r's halo is positions r*12 - width .. r*12 - 1.
    for width in (3, 12):
        tails = _tails(12, 4, width)
        assert halo_from_tails(tails, 0, width).shape[2] == 0
        for r in (1, 2, 3):
            assert halo_from_tails(tails, r, width).flatten().tolist() == list(range(r * 12 - width, r * 12))


def test_halo_wider_than_a_slice_spans_several_ranks():
    # Width 15 over slices of 12: rank 2 needs 3 positions of rank 0 and all 12 of rank 1;
    # rank 1 gets only the 12 that exist before it.
    tails = _tails(12, 3, 15)
    assert halo_from_tails(tails, 2, 15).flatten().tolist() == list(range(9, 24))
    assert halo_from_tails(tails, 1, 15).flatten().tolist() == list(range(0, 12))
