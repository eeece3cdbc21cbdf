"""Through the Trainer (DeepSpeed engine, LossModule, chunked loss, the step's token
normalisation), a packed batch's LM loss equals the token-weighted mean of the loss of each
document run alone: documents packed into one row do not see each other. The reference is
the plain HF forward of each document by itself and a cross-entropy written here.

The same trainer is used to check, from the method's written-out rule, which parameters the
engine trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from train_helpers import METHOD_FROZEN, METHOD_TRAINABLE, compose_run

DOCS = [[37, 60, 44], [60, 51, 18, 12]]  # document lengths per row (row 0 ends in padding)
SEQ = 141


class _OneBatch:
    """A loader that yields one fixed batch (the Trainer's `loader=` hook)."""

    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        return iter([self.batch])

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _packed_batch(vocab: int):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (len(DOCS), SEQ), generator=gen)
    pos = torch.zeros_like(ids)
    labels = ids.clone()
    docs = []  # (row, start, length) of every real document
    for r, lengths in enumerate(DOCS):
        start = 0
        for n in lengths + [SEQ - sum(lengths)]:  # the rest is padding, one more segment
            if n == 0:
                continue
            pos[r, start:start + n] = torch.arange(n)
            labels[r, start] = -100  # the data contract: no target across a boundary
            if start + n <= sum(lengths):
                docs.append((r, start, n))
            else:
                labels[r, start:start + n] = -100
            start += n
    return {"input_ids": ids, "position_ids": pos, "labels": labels}, docs


def _per_document_reference(lm, batch, docs):
    """Sum of token losses and number of targets, each document through the HF model alone."""
    total, count = 0.0, 0
    with torch.no_grad():
        for r, start, n in docs:
            ids = batch["input_ids"][r:r + 1, start:start + n]
            logits = lm(input_ids=ids, use_cache=False).logits.double()
            total += F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item()
            count += n - 1
    return total, count


@pytest.fixture(scope="module")
def trainer(base_overrides, tmp_path_factory):
    from train.trainer import Trainer

    overrides = base_overrides + ["train.max_steps=1", "train.ckpt_every=0",
                                  "train.save_final=false", "l2a.dense_prob=0.0"]
    cfg = compose_run(overrides)
    trainer = Trainer(cfg, tmp_path_factory.mktemp("packed"), overrides,
                      loader=_OneBatch(None))  # the batch is passed to train_step directly
    vocab = trainer.model_config.vocab_size
    yield trainer, vocab
    trainer.close()


def test_trainer_trains_exactly_the_methods_parameters(trainer):
    tr, _ = trainer
    names = dict(tr.module.lm.named_parameters())
    trainable = {n for n, p in names.items() if p.requires_grad}
    frozen = {n for n, p in names.items() if not p.requires_grad}
    assert trainable and all(METHOD_TRAINABLE.fullmatch(n) for n in trainable), sorted(
        n for n in trainable if not METHOD_TRAINABLE.fullmatch(n))
    assert frozen and all(METHOD_FROZEN.fullmatch(n) for n in frozen), sorted(
        n for n in frozen if not METHOD_FROZEN.fullmatch(n))
    layers = tr.model_config.num_hidden_layers
    assert sum(".router." in n for n in trainable) == layers
    assert sum(".mlp." in n for n in frozen) == 3 * layers


def test_packed_step_loss_equals_documents_alone(trainer):
    tr, vocab = trainer
    batch, docs = _packed_batch(vocab)
    lm = tr.module.lm
    was_training = lm.training
    lm.eval()
    total, count = _per_document_reference(lm, batch, docs)
    lm.train(was_training)
    # The step's targets are exactly the documents' own next tokens.
    assert count == int((batch["labels"][:, 1:] != -100).sum())
    metrics = tr.train_step([batch])
    # Every token routed at the paper init (router weight 0): the global branch attends over
    # the whole row unless document boundaries are honoured.
    assert metrics["sparsity"] == 0.0
    assert metrics["lm_loss"] == pytest.approx(total / count, rel=1e-5)
