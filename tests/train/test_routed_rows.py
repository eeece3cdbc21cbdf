"""The layout of the whole row's routed query rows under sequence parallelism
(`train.parallel.routed.whole_row_routed_rows`): what the rank of a head group holds after
the uneven all-to-all of every rank's compacted rows, and what the routed core is given.
Expectations from the route itself (hand-made: uneven counts per slice, padding rows)."""

from __future__ import annotations

import torch

from kernels.token_sparse.compact import routed_slots
from train.parallel.routed import whole_row_routed_rows

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


def test_flex_block_bounds_hold_for_the_whole_row_layout():
    """The FlexAttention path (the `auto` backend on Hopper with flash-attn-4) builds its block
    mask from the first and last row position of each query block, with padding rows at the
    last position: on the layout given to the core, skipped blocks hold no visible pair and
    full blocks only visible ones (several blocks, packed documents, padding mid-row before
    reordering)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))
    from attention_reference import allowed_mask, check_block_mask_cover, random_doc_ids

    from kernels.flex_mask import query_block_mask
    from kernels.utils import doc_start_positions

    B, T, block = 2, 640, 32
    g = torch.Generator().manual_seed(0)
    doc_ids = random_doc_ids(B, T, 3, g)
    # Routed fractions per (row, slice): each slice pads one row by many rows.
    fraction = torch.tensor([[0.5, 0.1], [0.1, 0.4]]).repeat_interleave(T // N, dim=1)
    route = torch.rand(B, T, generator=g) < fraction
    rows = whole_row_routed_rows(route, N)
    assert rows.order is not None
    q_pos = torch.where(rows.valid, rows.slots, T - 1)  # as routed_query_attention_flex does
    mask = query_block_mask(q_pos.int(), doc_start_positions(doc_ids), None, block=block)
    visible = allowed_mask(T, doc_ids, B).gather(1, q_pos[:, :, None].expand(B, q_pos.shape[1], T))
    check_block_mask_cover(mask, visible, block)
