"""Which parameters L2A continued pretraining updates, written out by hand from the method
page: both attention branches (q/k/v/o, their biases on Qwen2, their QK-norms on Qwen3), the
router, RMSNorm_global and every other norm train; MLPs, embeddings and the LM head stay
frozen. The expectation is spelt out here, not taken from `l2a.trainable`."""

from __future__ import annotations

import pytest

from l2a import mark_trainable
from l2a.convert import convert_model

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
BRANCH = {
    "qwen3": [f"{p}.weight" for p in PROJ] + ["q_norm.weight", "k_norm.weight"],
    "qwen2": [f"{p}.{w}" for p in PROJ[:3] for w in ("weight", "bias")] + ["o_proj.weight"],
}
FROZEN_PER_LAYER = ["mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"]


def expected_trainable(family: str, layers: int) -> set[str]:
    names = {"model.norm.weight"}
    for i in range(layers):
        pre = f"model.layers.{i}."
        names |= {pre + "input_layernorm.weight", pre + "post_attention_layernorm.weight",
                  pre + "self_attn.global_norm.weight", pre + "self_attn.router.weight"}
        names |= {f"{pre}self_attn.{branch}.{p}" for branch in ("local_attn", "global_attn")
                  for p in BRANCH[family]}
    return names


def expected_frozen(layers: int, tied: bool) -> set[str]:
    names = {"model.embed_tokens.weight"} | ({"lm_head.weight"} if not tied else set())
    return names | {f"model.layers.{i}.{p}" for i in range(layers) for p in FROZEN_PER_LAYER}


@pytest.mark.parametrize("tied", [False, True], ids=["separate-head", "tied-head"])
def test_trainable_set_is_the_methods(make_base, family, tied):
    layers = 3
    model = convert_model(make_base(family, layers=layers, tie_word_embeddings=tied),
                          init="paper", window=8)
    n_trainable, n_total = mark_trainable(model)
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    frozen = {n for n, p in params.items() if not p.requires_grad}
    assert trainable == expected_trainable(family, layers), (
        f"trains {sorted(trainable - expected_trainable(family, layers))}, "
        f"misses {sorted(expected_trainable(family, layers) - trainable)}"
    )
    assert frozen == expected_frozen(layers, tied)
    assert n_trainable == sum(params[n].numel() for n in expected_trainable(family, layers))
    assert n_total == sum(p.numel() for p in params.values())
    # The head is frozen whether or not it shares the embedding's storage.
    assert not model.lm_head.weight.requires_grad
    assert not model.model.embed_tokens.weight.requires_grad
