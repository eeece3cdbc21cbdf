"""Perplexity by position against the plain loss of the model's own logits; packed and
padded rows against documents run one by one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from eval_helpers import tiny_base, tiny_l2a

from eval.perplexity import _row, perplexity_at, total_loss

LENGTH, BUCKETS = 64, 4


def _model(kind, family):
    return tiny_l2a(family) if kind == "l2a" else tiny_base(family)


def _plain_token_losses(model, ids: np.ndarray) -> torch.Tensor:
    """Cross-entropy of target t (t >= 1) from the full logits, one document."""
    with torch.no_grad():
        logits = model(torch.as_tensor(ids)[None].long()).logits[0].float()
    return F.cross_entropy(logits[:-1], torch.as_tensor(ids[1:]).long(), reduction="none")


def _expected(model, docs: list[np.ndarray]):
    """Per bucket of in-document position: (summed loss, targets), docs run separately."""
    sums, counts = np.zeros(BUCKETS), np.zeros(BUCKETS, dtype=int)
    for d in docs:
        losses = _plain_token_losses(model, d)
        for t in range(1, len(d)):
            k = t * BUCKETS // LENGTH
            sums[k] += float(losses[t - 1])
            counts[k] += 1
    return sums, counts


def _check(buckets, sums, counts):
    assert [b["tokens"] for b in buckets] == counts.tolist()
    for b, s, n in zip(buckets, sums, counts):
        if n:
            assert b["loss"] == pytest.approx(s / n, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("kind", ["l2a", "dense"])
def test_by_position_equals_plain_loss(kind, family):
    model = _model(kind, family)
    ids = np.random.default_rng(0).integers(0, 256, LENGTH)
    buckets, _ = perplexity_at(model, [_row(ids)], LENGTH, BUCKETS, chunk_size=16)
    sums, counts = _expected(model, [ids])
    _check(buckets, sums, counts)
    assert total_loss(buckets) == pytest.approx(float(_plain_token_losses(model, ids).mean()), rel=1e-4)


@pytest.mark.parametrize("kind", ["l2a", "dense"])
def test_packed_row_keeps_documents_apart(kind, family):
    model = _model(kind, family)
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 256, 40), rng.integers(0, 256, 24)
    starts = np.zeros(LENGTH, dtype=bool)
    starts[40] = True
    buckets, _ = perplexity_at(model, [_row(np.concatenate([a, b]), starts)], LENGTH, BUCKETS)
    _check(buckets, *_expected(model, [a, b]))


def test_padded_row_equals_unpadded():
    """Trailing padding as the prepared data has it (its own segment, labels ignored)."""
    model = tiny_l2a()
    ids = np.random.default_rng(2).integers(0, 256, 48)
    plain, _ = perplexity_at(model, [_row(ids)], LENGTH, BUCKETS)
    starts = np.zeros(LENGTH, dtype=bool)
    starts[48] = True
    row = _row(np.concatenate([ids, np.full(16, 257)]), starts)
    row["labels"][48:] = -100
    padded, routing = perplexity_at(model, [row], LENGTH, BUCKETS)
    for p, q in zip(plain, padded):
        assert p["tokens"] == q["tokens"]
        assert p["loss"] == q["loss"] or p["loss"] == pytest.approx(q["loss"], rel=1e-5)
    assert sum(routing["bucket_tokens"]) == 47  # padding and first tokens not counted


def test_left_padded_batch_equals_unpadded(family):
    """The L2A model under a left-padded batch (lm-eval's generation batches): the real
    tokens' logits equal those of each sequence alone."""
    model = tiny_l2a(family)
    rng = torch.Generator().manual_seed(3)
    long, short = torch.randint(0, 256, (1, 20), generator=rng), torch.randint(0, 256, (1, 13), generator=rng)
    batch = torch.cat([long, torch.cat([torch.full((1, 7), 257), short], 1)])
    mask = torch.cat([torch.ones(1, 20), torch.cat([torch.zeros(1, 7), torch.ones(1, 13)], 1)]).long()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(batch, attention_mask=mask, position_ids=pos).logits
        ref_long, ref_short = model(long).logits, model(short).logits
    torch.testing.assert_close(out[0], ref_long[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[1, 7:], ref_short[0], rtol=1e-4, atol=1e-4)
