"""Packed sequences: a document's logits do not depend on its neighbours in the pack."""

from __future__ import annotations

import torch

from l2a.convert import convert_model


def _pack(docs):
    ids = torch.cat(docs)
    pos = torch.cat([torch.arange(len(d)) for d in docs])
    return ids.unsqueeze(0), pos.unsqueeze(0)


def test_packed_equals_unpacked(base_model):
    torch.manual_seed(0)
    model = convert_model(base_model, init="paper", window=6)
    with torch.no_grad():
        for layer in model.model.layers:  # a mixed routing decision
            layer.self_attn.router.weight.normal_(0, 0.3)
    vocab = base_model.config.vocab_size
    docs = [torch.randint(0, vocab, (n,)) for n in (13, 1, 29, 7)]
    ids, pos = _pack(docs)
    with torch.no_grad():
        packed = model(ids, position_ids=pos)
        start = 0
        for doc in docs:
            alone = model(doc.unsqueeze(0))
            n = len(doc)
            torch.testing.assert_close(packed.logits[0, start : start + n], alone.logits[0], atol=2e-5, rtol=1e-5)
            for d_packed, d_alone in zip(packed.routes, alone.routes):
                assert torch.equal(d_packed[0, start : start + n], d_alone[0])
            start += n


def test_packed_neighbour_change_does_not_leak(base_model):
    model = convert_model(base_model, init="paper", window=64)
    vocab = base_model.config.vocab_size
    a, b = torch.randint(0, vocab, (20,)), torch.randint(0, vocab, (15,))
    ids, pos = _pack([a, b])
    ids2 = ids.clone()
    ids2[0, :20] = torch.randint(0, vocab, (20,))  # a different first document
    with torch.no_grad():
        l1 = model(ids, position_ids=pos).logits[0, 20:]
        l2 = model(ids2, position_ids=pos).logits[0, 20:]
        unpacked = model(ids).logits[0, 20:]
    torch.testing.assert_close(l1, l2)
    assert (unpacked - l1).abs().max() > 1e-3  # without packing the documents do interact
