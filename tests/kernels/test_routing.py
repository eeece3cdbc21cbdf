"""Routing metadata built on the device: compaction order, prefix counts, document bounds."""

from __future__ import annotations

import torch
from attention_reference import random_doc_ids

from kernels.flash.routing import build_routing


def test_build_routing_matches_a_python_loop():
    g = torch.Generator().manual_seed(0)
    B, T = 3, 97
    route = torch.rand(B, T, generator=g) < 0.4
    route[1] = False
    route[2] = True
    doc_ids = random_doc_ids(B, T, 5, g)
    r = build_routing(route, doc_ids)
    for b in range(B):
        routed = [t for t in range(T) if route[b, t]]
        unrouted = [t for t in range(T) if not route[b, t]]
        assert r.order[b].tolist() == routed + unrouted
        assert int(r.count[b]) == len(routed)
        assert r.cum[b].tolist() == [sum(route[b, :t].tolist()) for t in range(T + 1)]
        for t in range(T):
            same = [j for j in range(T) if doc_ids[b, j] == doc_ids[b, t]]
            assert int(r.start[b, t]) == min(same) and int(r.end[b, t]) == max(same)


def test_build_routing_without_documents():
    route = torch.tensor([[True, False, True, False]])
    r = build_routing(route, None)
    assert r.order.tolist() == [[0, 2, 1, 3]]
    assert r.start.tolist() == [[0, 0, 0, 0]] and r.end.tolist() == [[3, 3, 3, 3]]
    assert all(t.dtype == torch.int32 for t in r)
