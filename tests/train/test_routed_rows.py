"""The layout of the whole row's routed query rows under sequence parallelism
(`train.sequence_parallel.whole_row_routed_rows`): what the rank of a head group holds after
the uneven all-to-all of every rank's compacted rows, and what the routed core is given.
Expectations from the route itself (hand-made: uneven counts per slice, padding rows)."""

from __future__ import annotations

import torch

from kernels.token_sparse.compact import routed_slots
from train.sequence_parallel import whole_row_routed_rows

T, N = 12, 2
LOCAL = T // N
# Row 0 routes 3 tokens of slice 0 and 1 of slice 1; row 1 routes 1 and 2: the ranks
# compact 3 and 2 rows; row 0 pads slice 1 once, row 1 pads slice 0 twice.
ROUTED = [[1, 4, 5, 7], [0, 6, 9]]


def _route(rows):
    route = torch.zeros(len(rows), T, dtype=torch.bool)
    for b, positions in enumerate(rows):
        route[b, positions] = True
    return route


def test_routed_rows_first_in_position_order_padding_after_in_its_own_slice():
    route = _route(ROUTED)
    rows = whole_row_routed_rows(route, N)
    assert rows.counts == [3, 2]
    assert rows.slots.shape == rows.valid.shape == (2, 5)
    for b, positions in enumerate(ROUTED):
        k = len(positions)
        assert rows.valid[b].tolist() == [True] * k + [False] * (5 - k)
        assert rows.slots[b, :k].tolist() == positions  # routed rows: ascending positions
        pad = rows.slots[b, k:].tolist()
        assert not route[b, pad].any()  # padding rows sit at unrouted positions
        assert len(set(rows.slots[b].tolist())) == 5  # distinct: a scatter never collides
    # Row 0's padding row came from slice 1, row 1's two from slice 0.
    assert all(LOCAL <= p < T for p in rows.slots[0, 4:].tolist())
    assert all(0 <= p < LOCAL for p in rows.slots[1, 3:].tolist())
    # FlexAttention's stand-in (padding at the last position) keeps positions ascending.
    q_pos = torch.where(rows.valid, rows.slots, T - 1)
    assert bool((q_pos[:, 1:] >= q_pos[:, :-1]).all())


def test_order_maps_the_rank_segments_the_exchange_delivers():
    """Before `order`: rank i's rows as its `routed_slots` lists them, offset by its slice."""
    route = _route(ROUTED)
    rows = whole_row_routed_rows(route, N)
    segments = rows.slots.gather(1, torch.argsort(rows.order, dim=1))
    valid = rows.valid.gather(1, torch.argsort(rows.order, dim=1))
    start = 0
    for i, count in enumerate(rows.counts):
        slots, ok = routed_slots(route[:, i * LOCAL:(i + 1) * LOCAL])
        assert slots.shape[1] == count
        assert torch.equal(segments[:, start:start + count], slots + i * LOCAL)
        assert torch.equal(valid[:, start:start + count], ok)
        start += count


def test_one_row_has_no_padding_and_no_reordering():
    route = _route([[2, 3, 8, 10, 11]])
    rows = whole_row_routed_rows(route, N)
    assert rows.counts == [2, 3] and rows.order is None
    assert rows.slots.tolist() == [[2, 3, 8, 10, 11]] and bool(rows.valid.all())
    none = whole_row_routed_rows(torch.zeros(1, T, dtype=torch.bool), N)
    assert none.counts == [0, 0] and none.slots.shape == (1, 0)
