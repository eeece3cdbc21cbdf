"""Facts derived once per tensor (kernels.utils.derived): the routed count and the document
boundaries are read from the device once, and again only for another or a changed tensor."""

from __future__ import annotations

import pytest
import torch

from bench.dispatch_counter import OpCounter
from kernels.sliding_window.fa4 import doc_cu_seqlens
from kernels.token_sparse.compact import remember_routed_rows, routed_rows, routed_slots


def _syncs(fn):
    with OpCounter() as counter:
        counter.phase = "p"
        value = fn()
    return value, counter.summary("p")["syncs"]


def test_routed_count_read_once_per_route_and_again_after_an_in_place_change():
    route = torch.tensor([[True, False, True, True], [False, True, False, False]])
    assert _syncs(lambda: routed_rows(route)) == (3, 1)
    assert _syncs(lambda: routed_rows(route)) == (3, 0)
    slots, valid = routed_slots(route)
    assert slots.shape == (2, 3) and valid.sum() == 4
    route[1] = True  # the same tensor, changed: read again
    assert _syncs(lambda: routed_rows(route)) == (4, 1)


def test_a_remembered_count_is_used_without_reading_the_device():
    route = torch.tensor([[True, False, True]])
    remember_routed_rows(route, 2)
    (slots, valid), syncs = _syncs(lambda: routed_slots(route))
    assert syncs == 0
    assert slots.tolist() == [[0, 2]] and valid.all()


def test_document_boundaries_read_once_per_doc_ids_tensor():
    doc_ids = torch.tensor([[0, 0, 0, 1, 1], [0, 1, 1, 1, 2]])
    cu, syncs = _syncs(lambda: doc_cu_seqlens(doc_ids))
    # Documents over the flattened rows: a row starts a document, as does every id change.
    assert cu.tolist() == [0, 3, 5, 6, 9, 10] and syncs == 1
    assert _syncs(lambda: doc_cu_seqlens(doc_ids))[1] == 0
    assert _syncs(lambda: doc_cu_seqlens(doc_ids.clone()))[1] == 1  # another tensor


def test_an_early_read_is_a_no_op_on_the_cpu():
    from kernels.token_sparse.compact import begin_routed_rows_read
    from kernels.utils import known

    route = torch.tensor([[True, False, True, True]])
    begin_routed_rows_read(route)
    assert known(route, "routed_rows_pending") is None
    assert _syncs(lambda: routed_rows(route)) == (3, 1)


@pytest.mark.gpu
def test_an_early_read_waits_for_its_copy_not_for_the_work_queued_after_it():
    """The count copied behind an event: `routed_rows` returns the right R once the event
    has completed, while a long matmul queued after the copy may still be running."""
    from kernels.token_sparse.compact import begin_routed_rows_read
    from kernels.utils import known

    g = torch.Generator(device="cuda").manual_seed(0)
    route = torch.rand(2, 4096, device="cuda", generator=g) < 0.3
    expected = int(route.sum(1).max())
    begin_routed_rows_read(route)
    host, ready = known(route, "routed_rows_pending")
    a = torch.randn(8192, 8192, device="cuda")
    for _ in range(20):  # ~0.2 s of GPU work queued after the copy
        a = a @ a / 8192
    assert routed_rows(route) == expected
    assert ready.query()  # the copy's event is done ...
    busy = torch.cuda.Event()
    busy.record()
    assert not busy.query()  # ... while the matmuls queued after it are still running
    torch.cuda.synchronize()
