"""HF conventions: save_pretrained / Auto loading with safetensors, generate()."""

from __future__ import annotations

import torch
from padding_helpers import left_padded
from transformers import AutoConfig, AutoModelForCausalLM

import l2a
from l2a.convert import convert_model


def test_save_and_auto_reload(base_model, tmp_path):
    model = convert_model(base_model, init="paper", window=8)
    with torch.no_grad():
        model.model.layers[0].self_attn.router.weight.normal_()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.model_type.startswith("l2a_") and config.l2a_window == 8
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    assert isinstance(loaded, (l2a.L2AQwen3ForCausalLM, l2a.L2AQwen2ForCausalLM))
    ids = torch.randint(0, base_model.config.vocab_size, (1, 25))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_generate_with_cache_matches_no_cache(base_model):
    model = convert_model(base_model, init="paper", window=4)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.router.weight.normal_(0, 0.5)
    prompt = torch.randint(0, base_model.config.vocab_size, (1, 9))
    cached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False)
    assert cached.shape == (1, 21)
    assert torch.equal(cached, uncached)


def test_identity_model_generates_like_base(base_model):
    model = convert_model(base_model, init="identity", window=4)
    prompt = torch.randint(0, base_model.config.vocab_size, (2, 7))
    a = model.generate(prompt, max_new_tokens=8, do_sample=False)
    b = base_model.generate(prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(a, b)


def test_left_padded_batch_matches_single(base_model):
    model = convert_model(base_model, init="paper", window=5)
    vocab = base_model.config.vocab_size
    short, long = torch.randint(1, vocab, (6,)), torch.randint(1, vocab, (10,))
    ids, mask = left_padded(short, long)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batched = model(ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
        alone = model(short.unsqueeze(0), use_cache=False).logits
    torch.testing.assert_close(batched[0, 4:], alone[0], atol=2e-5, rtol=1e-5)
