"""End to end: with what the loader emits (position ids restarting per document), a
document's logits inside a packed row equal its logits alone, and the packed loss equals
the sum of the documents' own losses. Plain transformers Qwen3, 2 layers, fp32."""

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from train.data import DataConfig, build_dataloader, document_causal_mask, prepare_data


@pytest.fixture(scope="module")
def batch(tmp_path_factory, byte_tok):
    tmp = tmp_path_factory.mktemp("xattn")
    cfg = DataConfig.from_dict(
        {
            "seq_len": 160,
            "cache_dir": str(tmp / "cache"),
            "sources": [
                {
                    "type": "generated",
                    "generated": {"num_docs": 60, "min_words": 2, "max_words": 25},
                }
            ],
        }
    )
    prepared = prepare_data(cfg, byte_tok, tmp / "out", verbose=False)
    loader = build_dataloader(prepared, micro_batch_size=3, seed=0)
    for _ in range(20):  # a batch with several documents in a row, and padding
        b = next(loader)
        starts = (b["position_ids"] == 0).sum(-1)
        if (starts >= 3).all():
            return b
    raise AssertionError("no batch with several documents per row")


def _model(attn):
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=258,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        attn_implementation=attn,
    )
    return Qwen3ForCausalLM(config).eval().float()


def _documents(position_ids):
    """(start, end) of every document of a row, from position ids alone."""
    starts = (position_ids == 0).nonzero().flatten().tolist() + [len(position_ids)]
    return list(zip(starts[:-1], starts[1:]))


def _additive(mask):
    return torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("mask_from", ["4d_mask", "position_ids_only"])
def test_document_logits_equal_logits_alone(batch, attn, mask_from):
    model = _model(attn)
    ids, pos = batch["input_ids"], batch["position_ids"]
    with torch.no_grad():
        if mask_from == "4d_mask":
            packed = model(
                ids,
                attention_mask=_additive(document_causal_mask(pos)),
                position_ids=pos,
                use_cache=False,
            ).logits
        else:  # transformers derives the same mask from restarting position ids
            packed = model(ids, position_ids=pos, use_cache=False).logits
        checked = 0
        for b in range(ids.shape[0]):
            for s, e in _documents(pos[b]):
                alone = model(ids[b : b + 1, s:e], use_cache=False).logits[0]
                torch.testing.assert_close(packed[b, s:e], alone, atol=2e-5, rtol=1e-4)
                checked += 1
    assert checked >= 9


def test_packed_loss_is_the_sum_of_document_losses(batch):
    model = _model("sdpa")
    ids, pos, labels = batch["input_ids"], batch["position_ids"], batch["labels"]
    ce = torch.nn.CrossEntropyLoss(reduction="sum", ignore_index=-100)
    with torch.no_grad():
        logits = model(
            ids,
            attention_mask=_additive(document_causal_mask(pos)),
            position_ids=pos,
            use_cache=False,
        ).logits
        packed = ce(logits[:, :-1].reshape(-1, 258), labels[:, 1:].reshape(-1))
        alone, n_alone = 0.0, 0
        for b in range(ids.shape[0]):
            for s, e in _documents(pos[b]):
                if (ids[b, s:e] == 257).all():
                    continue  # the padding segment predicts nothing
                doc = ids[b : b + 1, s:e]
                out = model(doc, use_cache=False).logits[0]
                alone = alone + ce(out[:-1], doc[0, 1:])
                n_alone += e - s - 1
    assert n_alone == int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(packed, alone, atol=1e-3, rtol=1e-5)


def test_without_document_masking_logits_differ(batch):
    """The control: plain causal attention over the row leaks across documents."""
    model = _model("sdpa")
    ids, pos = batch["input_ids"], batch["position_ids"]
    with torch.no_grad():
        leaky = model(
            ids, attention_mask=torch.ones_like(ids), position_ids=pos, use_cache=False
        ).logits
        s, e = _documents(pos[0])[1]
        alone = model(ids[:1, s:e], use_cache=False).logits[0]
    assert not torch.allclose(leaky[0, s:e], alone, atol=1e-3)
