"""A static-cache decoding step runs its attention through the split-KV kernels when the
backend asks for Triton (on CUDA ``auto`` does: kernels/decode.py): every attention call of
the step (each local ring, each global buffer, each base layer) goes to
``split_kv_decode_attention`` and the logits stay the uncached forward's. On the CPU through
the Triton interpreter (tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch
from test_cache import _model  # the tiny L2A model with a route mixture

import kernels.decode_split as split
from l2a.cache import cache_slots
from l2a.decode_graph import GraphedDecoder
from l2a.static_cache import L2AStaticCache


@pytest.mark.parametrize("family", ["qwen3"])
def test_decoding_steps_run_the_split_kernel(base_model, monkeypatch):
    model = _model(base_model)
    vocab, B, P, n = base_model.config.vocab_size, 2, 9, 5
    prompt = torch.randint(1, vocab, (B, P), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(prompt, use_cache=False).logits  # torch backend, no cache

    calls = []
    real = split.split_kv_decode_attention
    monkeypatch.setattr(split, "split_kv_decode_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    cache = L2AStaticCache(model.config, max_cache_len=P + n)
    decoder = GraphedDecoder(model, cache, capture=False)
    with torch.no_grad():
        model(prompt[:, :4], past_key_values=cache)  # prefill (eager kernels, torch backend)
    model.l2a_runtime.attn_backend = "triton"  # the decoding steps: the split kernels
    steps = []
    for t in range(4, P):
        logits, _ = decoder.step(prompt[:, t : t + 1])
        steps.append(logits[:, -1])
    torch.testing.assert_close(torch.stack(steps, 1), reference[:, 4:], atol=1e-4, rtol=1e-4)
    # One call per cache slot (attention branch) and step, counted from the config.
    assert len(calls) == (P - 4) * len([s for pair in cache_slots(model.config) for s in pair if s is not None])
