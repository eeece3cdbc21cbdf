"""The dense base's decoding attention on the split-KV kernels (bench/dense_decode_attention.py):
a tiny Qwen3 on transformers' StaticCache, prefilled on SDPA, then decoding steps through
the registered attention implementation (the kernels under the Triton interpreter) give
SDPA's logits, with a left-padded row (a mask with holes) and every decoding call taken by
the kernels; longer calls stay on SDPA."""

from __future__ import annotations

import functools

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM, StaticCache

import kernels.decode_split as split
from bench.dense_decode_attention import split_decode_attention, use_split_decode


def _tiny():
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      max_position_embeddings=256, attn_implementation="sdpa")
    return Qwen3ForCausalLM(cfg).float().eval()


def _decode(model, ids, mask, steps):
    """Prefill ``ids`` then feed ``steps`` fixed tokens one by one; logits of each step."""
    B, P = ids.shape
    cache = StaticCache(config=model.config, max_cache_len=P + steps + 3)
    out, logits = model(ids, attention_mask=mask, past_key_values=cache), []
    tokens = torch.arange(1, steps + 1).repeat(B, 1)
    for i in range(steps):
        mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
        pos = (mask.sum(-1, keepdim=True) - 1)
        out = model(tokens[:, i : i + 1], attention_mask=mask, position_ids=pos,
                    past_key_values=cache, cache_position=torch.tensor([P + i]))
        logits.append(out.logits[:, -1])
    return torch.stack(logits, 1)


def test_dense_decoding_on_the_split_kernels_equals_sdpa(monkeypatch):
    model = _tiny()
    ids = torch.randint(1, 97, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :3] = 0  # left padding
    with torch.no_grad():
        reference = _decode(model, ids, mask, steps=4)
    calls = []
    real = split.split_kv_decode_attention
    monkeypatch.setattr(split, "split_kv_decode_attention", lambda *a, **kw: calls.append(a[0].shape) or real(*a, **kw))
    triton = functools.partial(split_decode_attention, backend="triton")  # CPU: the interpreter
    with torch.no_grad(), use_split_decode(model, "l2a_split_decode_test", triton):
        ours = _decode(model, ids, mask, steps=4)
    assert model.config._attn_implementation == "sdpa"  # restored
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
    # Every decoding step of both layers (the 9-query prefill may run them too).
    assert sum(1 for shape in calls if shape[2] == 1) == 4 * 2
