"""Tiny dense Qwen2 / Qwen3 base models, built and saved by the tests (no downloads)."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

import l2a  # noqa: F401  (registers the Auto classes)

VOCAB = 301


def tiny_base(family: str, layers: int = 2, seed: int = 0, **overrides):
    """A 2-layer Qwen-shaped dense model in fp32 with GQA (4 q heads, 2 kv heads)."""
    torch.manual_seed(seed)
    kw = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-6,
    )
    kw.update(overrides)
    if family == "qwen3":
        kw.setdefault("head_dim", 16)
        model = Qwen3ForCausalLM(Qwen3Config(**kw))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**kw))
        # HF zero-initialises biases; random ones make the bias path observable.
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0.0, 0.1)
    # Random (not all-ones) norms so that a norm copied to the wrong place shows.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model.float().eval()


@pytest.fixture(params=["qwen3", "qwen2"])
def family(request):
    return request.param


@pytest.fixture
def make_base():
    """The factory itself, for tests that need other shapes."""
    return tiny_base


@pytest.fixture
def base_model(family):
    return tiny_base(family)

