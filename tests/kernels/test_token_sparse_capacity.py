"""The capacity layout of compacted routed queries (`routed_slots(route, capacity=True)`):
T rows whose shape needs no host read, and attention on them that costs what R rows cost.

- the slots are a permutation of a row's positions, routed ones first in position order,
  `valid` their prefix, all computed with no host synchronisation;
- the FlexAttention block mask of those rows, against block lists computed by brute force
  from a dense token mask: query blocks made only of padding rows have no key block at all
  (neither listed for the forward nor in the transposed lists of the backward), every
  visible pair of a routed row is in a listed block, a full block holds only visible pairs;
- the FlexAttention path's forward (run eagerly on CPU: FlexAttention's eager path applies
  the mask_mod to dense scores, and has no CPU backward) equals the dense reference, padding
  rows zero (gradients: tests/kernels/test_backends.py, `pytest -m gpu`);
- a prefill chunk onto cached keys (queries the last Tq of Tk keys) in the capacity layout
  equals the count layout and the reference (torch and FlexAttention paths).
"""

from __future__ import annotations

import pytest
import torch
from attention_reference import allowed_mask, random_doc_ids, token_sparse_reference

import kernels.token_sparse.flex as tsf
from bench.dispatch_counter import OpCounter
from kernels.flex_mask import BLOCK
from kernels.token_sparse.compact import routed_query_attention, routed_slots


def _routes(T: int, seed: int = 0) -> torch.Tensor:
    """Rows routing different counts: some, nothing, everything, one token."""
    g = torch.Generator().manual_seed(seed)
    route = torch.zeros(4, T, dtype=torch.bool)
    route[0] = torch.rand(T, generator=g) < 0.3
    route[2] = True
    route[3, T // 2] = True
    return route


def test_capacity_slots_are_a_permutation_routed_first_with_no_host_read():
    T = 37
    route = _routes(T)
    with OpCounter() as counter:
        counter.phase = "p"
        slots, valid = routed_slots(route, capacity=True)
    assert counter.summary("p")["syncs"] == 0
    assert slots.shape == valid.shape == (4, T)
    for b in range(4):
        routed = [t for t in range(T) if route[b, t]]
        unrouted = [t for t in range(T) if not route[b, t]]
        assert sorted(slots[b].tolist()) == list(range(T))  # a permutation: no collision
        n = len(routed)
        assert slots[b, :n].tolist() == routed  # routed positions first, in order
        assert sorted(slots[b, n:].tolist()) == unrouted
        assert valid[b].tolist() == [i < n for i in range(T)]
    # the count layout is its prefix of R columns
    count_slots, count_valid = routed_slots(route)
    R = count_slots.shape[1]
    assert torch.equal(count_slots, slots[:, :R]) and torch.equal(count_valid, valid[:, :R])


@pytest.fixture
def captured_masks(monkeypatch):
    """The flex path's block masks, its FlexAttention call stood in by zeros."""
    seen = []

    def record(q, k, v, mask, scale, flash):
        seen.append(mask)
        return q.new_zeros(q.shape)

    monkeypatch.setattr(tsf, "_flex", record)
    return seen


def _listed(num, idx, n_rows, n_cols):
    """(B, n_rows, n_cols) bool from a BlockMask's (num, indices) pair."""
    B = num.shape[0]
    out = torch.zeros(B, n_rows, n_cols, dtype=torch.bool)
    for b in range(B):
        for i in range(n_rows):
            out[b, i, idx[b, 0, i, : num[b, 0, i]].long()] = True
    return out


@pytest.mark.parametrize("n_docs", [1, 4])
@pytest.mark.parametrize("T", [300, 512])
def test_block_lists_against_brute_force(captured_masks, T, n_docs):
    B = 4
    g = torch.Generator().manual_seed(T + n_docs)
    route = _routes(T, seed=T)
    doc_ids = random_doc_ids(B, T, n_docs, g) if n_docs > 1 else None
    slots, valid = routed_slots(route, capacity=True)
    q = torch.randn(B, 2, T, 16)
    k = v = torch.randn(B, 1, T, 16)
    tsf.routed_query_attention_flex(q, k, v, slots, valid, doc_ids, 0.25, flash=False)
    (bm,) = captured_masks
    assert bm.seq_lengths == (T, T)  # T rows: no padding past the row length

    # Brute force: token (row c, key j) is visible iff row c is routed and may see key j.
    nb = -(-T // BLOCK)
    visible = allowed_mask(T, doc_ids, B).gather(1, slots[:, :, None].expand(B, T, T))
    visible &= valid[:, :, None]
    pad = torch.nn.functional.pad(visible, (0, nb * BLOCK - T, 0, nb * BLOCK - T))
    blocks = pad.view(B, nb, BLOCK, nb, BLOCK)
    any_visible = blocks.any(4).any(2)
    # "all visible" over the routed rows of a block (padding rows are zeroed by the caller)
    row_ok = torch.nn.functional.pad(valid, (0, nb * BLOCK - T)).view(B, nb, BLOCK, 1, 1)
    key_in = torch.arange(nb * BLOCK).view(1, 1, 1, nb, BLOCK) < T
    all_visible = (blocks | ~row_ok | ~key_in).all(4).all(2)
    has_routed = row_ok.view(B, nb, BLOCK).any(2)  # (B, query blocks)

    partial = _listed(bm.kv_num_blocks, bm.kv_indices, nb, nb)
    full = _listed(bm.full_kv_num_blocks, bm.full_kv_indices, nb, nb)
    assert not (partial & full).any()
    assert ((partial | full) >= any_visible).all(), "a visible pair lies in a skipped block"
    assert (full <= all_visible).all(), "a full block holds a masked pair"
    # Padding-only query blocks: no key block at all, forward and (transposed) backward.
    dead = ~has_routed
    assert dead.any()  # the rows routing few tokens leave most of their blocks padding
    assert not (partial | full)[dead].any(), "a query block of padding rows has key blocks"
    assert (bm.kv_num_blocks[:, 0][dead] == 0).all() and (bm.full_kv_num_blocks[:, 0][dead] == 0).all()
    partial_t = _listed(bm.q_num_blocks, bm.q_indices, nb, nb).transpose(1, 2)
    full_t = _listed(bm.full_q_num_blocks, bm.full_q_indices, nb, nb).transpose(1, 2)
    assert torch.equal(partial_t, partial) and torch.equal(full_t, full)
    if n_docs == 1:
        # One causal document: the block bounds are exact, not just a cover.
        assert torch.equal(partial | full, any_visible) and torch.equal(full, all_visible & has_routed[:, :, None])


def test_padding_rows_past_the_routed_ones_cost_no_more_than_the_count_layout(captured_masks):
    """Block for block, the capacity layout lists the count layout's key blocks (its first
    R rows are the count layout's rows) and none after them."""
    T = 640
    route = _routes(T)
    q = torch.randn(4, 2, T, 16)
    k = v = torch.randn(4, 1, T, 16)
    for capacity in (False, True):
        slots, valid = routed_slots(route, capacity=capacity)
        rows = slots.shape[1]
        tsf.routed_query_attention_flex(q[:, :, :rows], k, v, slots, valid, None, 0.25, flash=False)
    count, capacity = captured_masks

    def listed(bm):
        n_rows = bm.kv_num_blocks.shape[2]
        return _listed(bm.kv_num_blocks, bm.kv_indices, n_rows, -(-T // BLOCK)) | _listed(
            bm.full_kv_num_blocks, bm.full_kv_indices, n_rows, -(-T // BLOCK))

    a, b = listed(count), listed(capacity)
    assert torch.equal(b[:, : a.shape[1]], a)
    assert not b[:, a.shape[1]:].any()


@pytest.mark.parametrize("case", [(300, 4, 2, 1), (333, 4, 1, 3), (130, 2, 2, 2)])
def test_flex_path_numbers_in_the_capacity_layout(monkeypatch, case):
    """Odd lengths, GQA, packed documents, rows routing different counts, none, all."""
    T, Hq, Hkv, n_docs = case
    monkeypatch.setattr(tsf, "_compiled_flex", lambda dynamic: tsf._flex_call)  # eager
    g = torch.Generator().manual_seed(T)
    B, D = 4, 16
    route = _routes(T, seed=T)
    doc_ids = random_doc_ids(B, T, n_docs, g) if n_docs > 1 else None
    q = torch.randn(B, Hq, T, D, generator=g)
    k, v = (torch.randn(B, Hkv, T, D, generator=g) for _ in range(2))
    slots, valid = routed_slots(route, capacity=True)
    rows = lambda x: x.gather(2, slots[:, None, :, None].expand(B, x.shape[1], T, D))  # noqa: E731
    q_c = rows(q)

    def reference(q_c, k, v):
        full = q_c.new_zeros(B, Hq, T, D).scatter(2, slots[:, None, :, None].expand(B, Hq, T, D), q_c)
        return rows(token_sparse_reference(full, k, v, route, doc_ids)) * valid[:, None, :, None]

    with torch.no_grad():  # FlexAttention has no CPU backward (the GPU tests cover it)
        got = routed_query_attention(q_c, k, v, route, doc_ids, backend="flex")
    torch.testing.assert_close(got.double(), reference(q_c.double(), k.double(), v.double()),
                               rtol=1e-5, atol=1e-5)
    assert not got[~valid[:, None, :, None].expand_as(got)].any()  # padding rows: zeros


@pytest.mark.parametrize("backend", ["torch", "flex"])
@pytest.mark.parametrize("past, n_docs", [(130, 1), (77, 3)])
def test_capacity_layout_of_a_chunk_onto_cached_keys(monkeypatch, backend, past, n_docs):
    """A prefill chunk: the queries are the last Tq of Tk keys, the route and the slots are
    over the queries. In the capacity layout (Tq rows) the output equals the count layout's
    (R rows) and the reference: causal attention of all Tk positions' queries, of which the
    chunk's are the last Tq rows (the earlier positions routed off)."""
    monkeypatch.setattr(tsf, "_compiled_flex", lambda dynamic: tsf._flex_call)  # eager
    Tq, Hq, Hkv, D = 170, 4, 2, 16
    Tk = past + Tq
    B = 4
    g = torch.Generator().manual_seed(past)
    route = _routes(Tq, seed=past)
    route[2, ::3] = False  # no row routes everything: the count layout has fewer rows
    doc_ids = random_doc_ids(B, Tk, n_docs, g) if n_docs > 1 else None
    q = torch.randn(B, Hq, Tq, D, generator=g)
    k, v = (torch.randn(B, Hkv, Tk, D, generator=g) for _ in range(2))

    def at_positions(capacity):
        slots, valid = routed_slots(route, capacity=capacity)
        R = slots.shape[1]
        index = slots[:, None, :, None].expand(B, Hq, R, D)
        with torch.no_grad():  # FlexAttention has no CPU backward (the GPU tests cover it)
            o_c = routed_query_attention(q.gather(2, index), k, v, route, doc_ids, backend=backend)
        assert not o_c[~valid[:, None, :, None].expand_as(o_c)].any()  # padding rows: zeros
        return o_c.new_zeros(B, Hq, Tq, D).scatter(2, index, o_c), R

    capacity, rows = at_positions(True)
    count, count_rows = at_positions(False)
    assert rows == Tq and count_rows == int(route.sum(1).max()) < Tq
    q_all = torch.cat([torch.zeros(B, Hq, past, D), q], dim=2)
    route_all = torch.cat([torch.zeros(B, past, dtype=torch.bool), route], dim=1)
    want = token_sparse_reference(q_all.double(), k.double(), v.double(), route_all, doc_ids)[:, :, past:]
    torch.testing.assert_close(capacity, count, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(capacity.double(), want, rtol=1e-5, atol=1e-5)
