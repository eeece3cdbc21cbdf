"""kernels.flex_mask: the block bounds built in one compiled region (as on CUDA) give the
same BlockMask as the eager build, and the query blocks of every key block (the backward's
side, which the mask now builds itself instead of BlockMask.from_kv_blocks) are the
transpose torch computes from the key blocks."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import BlockMask

from kernels.flex_mask import query_block_mask
from kernels.token_sparse.compact import routed_slots
from kernels.utils import doc_start_positions

from attention_reference import random_doc_ids  # noqa: E402  (tests/kernels helper)


def _case(B, T, n_docs, fraction, seed):
    g = torch.Generator().manual_seed(seed)
    doc_ids = random_doc_ids(B, T, n_docs, g)
    route = torch.rand(B, T, generator=g) < fraction
    route[:, 0] = True
    slots, valid = routed_slots(route)
    q_pos = torch.where(valid, slots, T - 1).int()
    return q_pos, doc_start_positions(doc_ids)


def _dense(num, idx, n_cols):
    """(B, H, rows, n_cols) bool from an ordered (num, idx) pair: the block set, whatever
    the order of the indices past num."""
    B, H, rows, _ = idx.shape
    out = torch.zeros(B, H, rows, n_cols, dtype=torch.bool)
    for b in range(B):
        for r in range(rows):
            n = int(num[b, 0, r])
            out[b, 0, r, idx[b, 0, r, :n].long()] = True
    return out


@pytest.mark.parametrize("window", [None, 40])
@pytest.mark.parametrize("B,T,n_docs,fraction,block", [(2, 700, 4, 0.3, 64), (1, 513, 1, 0.05, 32)])
def test_query_blocks_are_the_transpose_of_the_key_blocks(B, T, n_docs, fraction, block, window):
    q_pos, starts = _case(B, T, n_docs, fraction, T)
    ours = query_block_mask(q_pos, starts, window, block=block, compiled=False)
    ref = BlockMask.from_kv_blocks(ours.kv_num_blocks, ours.kv_indices, ours.full_kv_num_blocks,
                                   ours.full_kv_indices, BLOCK_SIZE=block,
                                   seq_lengths=(q_pos.shape[1], T))
    nq = ours.kv_indices.shape[-2]
    assert torch.equal(ours.q_num_blocks, ref.q_num_blocks)
    assert torch.equal(ours.full_q_num_blocks, ref.full_q_num_blocks)
    assert torch.equal(_dense(ours.q_num_blocks, ours.q_indices, nq),
                       _dense(ref.q_num_blocks, ref.q_indices, nq))
    assert torch.equal(_dense(ours.full_q_num_blocks, ours.full_q_indices, nq),
                       _dense(ref.full_q_num_blocks, ref.full_q_indices, nq))
    assert ours.seq_lengths == (q_pos.shape[1], T) and ours.BLOCK_SIZE == (block, block)


def test_compiled_block_bounds_equal_the_eager_ones_for_every_routed_count():
    """One dynamic-shape graph: two routed counts and lengths, the same tensors as eager."""
    for B, T, fraction, seed in [(2, 640, 0.25, 1), (2, 900, 0.6, 2)]:
        q_pos, starts = _case(B, T, 3, fraction, seed)
        eager = query_block_mask(q_pos, starts, None, block=64, compiled=False)
        comp = query_block_mask(q_pos, starts, None, block=64, compiled=True)
        for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices",
                     "q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices"):
            assert torch.equal(getattr(eager, name), getattr(comp, name)), name
        # the mask_mod reads the same positions and documents
        b = torch.zeros(1, dtype=torch.long)
        qi = torch.arange(q_pos.shape[1])
        ki = torch.arange(T)
        for bb in range(B):
            b.fill_(bb)
            e = eager.mask_mod(b[:, None], 0, qi[:, None], ki[None, :])
            c = comp.mask_mod(b[:, None], 0, qi[:, None], ki[None, :])
            assert torch.equal(e, c)


def test_compiled_block_bounds_with_padding_rows_equal_the_eager_ones():
    """The capacity layout's validity (`q_valid`) goes through the compiled region as a
    tensor input: the same block lists as eager, padding-only query blocks empty."""
    for B, T, fraction, seed in [(2, 640, 0.1, 3), (3, 520, 0.4, 4)]:
        g = torch.Generator().manual_seed(seed)
        route = torch.rand(B, T, generator=g) < fraction
        route[-1] = False  # a row routing nothing
        slots, valid = routed_slots(route, capacity=True)
        q_pos = torch.where(valid, slots, 0).cummax(1).values
        starts = doc_start_positions(random_doc_ids(B, T, 3, g))
        eager = query_block_mask(q_pos, starts, None, block=64, compiled=False, q_valid=valid)
        comp = query_block_mask(q_pos, starts, None, block=64, compiled=True, q_valid=valid)
        for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices",
                     "q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices"):
            assert torch.equal(getattr(eager, name), getattr(comp, name)), name
        assert not comp.kv_num_blocks[-1].any() and not comp.full_kv_num_blocks[-1].any()


def test_a_failing_compile_is_recorded_and_the_eager_bounds_used(monkeypatch):
    import kernels.flex_mask as fm
    from kernels.fallbacks import clear_fallbacks, fallbacks

    def broken():
        def call(*args):
            raise RuntimeError("inductor says no")
        return call

    clear_fallbacks()
    monkeypatch.setattr(fm, "_compiled_block_tensors", broken)
    q_pos, starts = _case(1, 300, 2, 0.3, 5)
    with pytest.warns(UserWarning, match="inductor says no"):
        got = query_block_mask(q_pos, starts, None, block=64, compiled=True)
    want = query_block_mask(q_pos, starts, None, block=64, compiled=False)
    assert torch.equal(got.kv_indices, want.kv_indices)
    assert [f["op"] for f in fallbacks()] == [fm.MASK_OP]
    clear_fallbacks()
