"""The L2A KV cache and generation: greedy decoding equals the uncached forward (tokens and
logits) with prompts longer than the window, left-padded batches, chunked prefill and beam
search; what the cache holds, counted in bytes from first principles."""

from __future__ import annotations

import pytest
import torch
from padding_helpers import left_padded
from transformers import DynamicCache

import kernels
from l2a import layers as l2a_layers
from l2a.cache import L2ACache, kv_cache_bytes
from l2a.configuration import L2AQwen3Config
from l2a.convert import convert_model

WINDOW = 4


def _model(base_model, window=WINDOW, router_std=0.5, seed=1, **cfg):
    model = convert_model(base_model, init="paper", window=window)
    for key, value in cfg.items():
        setattr(model.config, key, value)
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.router.weight.normal_(0, router_std)
    return model.eval()


def _uncached_logits(model, ids, mask=None):
    pos = None
    if mask is not None:
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(ids, attention_mask=mask, position_ids=pos, use_cache=False).logits


def _generate(model, ids, mask=None, n=8, **kw):
    out = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=n,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
        pad_token_id=0,
        **kw,
    )
    return out.sequences, torch.stack(out.logits, dim=1)


def test_greedy_generation_equals_uncached_forward(base_model):
    model = _model(base_model)
    prompt = torch.randint(1, base_model.config.vocab_size, (1, 11))  # > window
    seq, logits = _generate(model, prompt, n=10)
    full = _uncached_logits(model, seq)
    # The logits of step t predict token 11 + t from everything before it.
    torch.testing.assert_close(logits[0], full[0, 10:-1], atol=1e-4, rtol=1e-4)
    assert torch.equal(seq[0, 11:], full[0, 10:-1].argmax(-1))
    # Some tokens were routed and some were not in the decoding steps (both paths ran).
    with torch.no_grad():
        routes = model(seq, use_cache=False).routes
    decided = torch.stack(routes)[:, 0, 11:]
    assert decided.any() and not decided.all()


def test_generate_uses_the_l2a_cache(base_model):
    model = _model(base_model)
    prompt = torch.randint(1, base_model.config.vocab_size, (1, 9))
    with torch.no_grad():
        out = model(prompt, use_cache=True)
    cache = out.past_key_values
    assert isinstance(cache, L2ACache)
    n_layers = base_model.config.num_hidden_layers
    assert len(cache.layers) == 2 * n_layers
    for i in range(n_layers):
        assert cache.layers[2 * i].keys.shape[2] == WINDOW - 1  # local: window - 1
        assert cache.layers[2 * i + 1].keys.shape[2] == 9  # global: every token


def test_left_padded_batch_generates_like_each_prompt_alone(base_model):
    model = _model(base_model)
    vocab = base_model.config.vocab_size
    short, long = torch.randint(1, vocab, (6,)), torch.randint(1, vocab, (10,))
    ids, mask = left_padded(short, long)
    seq, logits = _generate(model, ids, mask, n=9)
    for row, prompt in ((0, short), (1, long)):
        alone_seq, alone_logits = _generate(model, prompt[None], n=9)
        assert torch.equal(seq[row, 10:], alone_seq[0, prompt.numel() :])
        torch.testing.assert_close(logits[row], alone_logits[0], atol=1e-4, rtol=1e-4)


def test_padded_prefill_matches_uncached_forward(base_model):
    model = _model(base_model, window=3)
    ids = torch.randint(1, base_model.config.vocab_size, (2, 12))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        cached = model(ids, attention_mask=mask, position_ids=pos, use_cache=True).logits
    alone = _uncached_logits(model, ids[:1, 5:])
    torch.testing.assert_close(cached[0, 5:], alone[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_chunked_prefill_equals_one_pass(base_model, chunk):
    model = _model(base_model)
    ids = torch.randint(1, base_model.config.vocab_size, (2, 13))
    full = _uncached_logits(model, ids)
    cache = L2ACache(model.config)
    pieces = []
    with torch.no_grad():
        for s in range(0, ids.shape[1], chunk):
            out = model(ids[:, s : s + chunk], past_key_values=cache, use_cache=True)
            pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4, rtol=1e-4)
    assert cache.get_seq_length() == 13


def test_chunked_prefill_of_a_padded_batch(base_model):
    model = _model(base_model)
    ids = torch.randint(1, base_model.config.vocab_size, (2, 14))
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = L2ACache(model.config)
    pieces = []
    with torch.no_grad():
        for s in range(0, 14, 4):
            e = min(14, s + 4)
            out = model(
                ids[:, s:e],
                attention_mask=mask[:, :e],
                position_ids=pos[:, s:e],
                past_key_values=cache,
            )
            pieces.append(out.logits)
    logits = torch.cat(pieces, dim=1)
    torch.testing.assert_close(
        logits[1, 6:], _uncached_logits(model, ids[1:, 6:])[0], atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(logits[0], _uncached_logits(model, ids[:1])[0], atol=1e-4, rtol=1e-4)


def test_chunks_reach_the_ops_as_queries_against_the_cached_keys(base_model, monkeypatch):
    """No T x T mask anywhere: each op gets the chunk's queries and the keys its slot holds
    (local: at most window - 1 cached + the chunk; global: all)."""
    model = _model(base_model, router_std=0.0)  # p = 0.5: every token routed
    seen = {"local": [], "global": []}

    def spy(name, fn):
        def wrapped(q, k, *args, **kw):
            seen[name].append((q.shape[2], k.shape[2]))
            return fn(q, k, *args, **kw)

        return wrapped

    monkeypatch.setattr(
        l2a_layers, "sliding_window_attention", spy("local", kernels.sliding_window_attention)
    )
    monkeypatch.setattr(
        l2a_layers, "token_sparse_attention", spy("global", kernels.token_sparse_attention)
    )
    cache = L2ACache(model.config)
    ids = torch.randint(1, base_model.config.vocab_size, (1, 12))
    with torch.no_grad():
        for s in (0, 5, 10):
            model(ids[:, s : s + 5], past_key_values=cache)
    n = base_model.config.num_hidden_layers
    assert seen["local"] == [(5, 5)] * n + [(5, 8)] * n + [(2, 5)] * n
    assert seen["global"] == [(5, 5)] * n + [(5, 10)] * n + [(2, 12)] * n


def test_unrouted_decoding_steps_skip_the_global_branch(base_model, monkeypatch):
    """Router threshold above p = 0.5 with zero router weights: no token is ever routed.
    Decoding then never runs the global attention, yet caches its keys."""
    model = _model(base_model, router_std=0.0)
    for layer in model.model.layers:
        layer.self_attn.logit_threshold = 1.0
    calls = []
    for layer in model.model.layers:
        glob = layer.self_attn.global_attn
        monkeypatch.setattr(glob, "forward", lambda *a, **k: calls.append(1))
    prompt = torch.randint(1, base_model.config.vocab_size, (1, 7))
    cache = L2ACache(model.config)
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=5, do_sample=False, past_key_values=cache)
    assert calls == []
    assert cache.layers[1].get_seq_length() == out.shape[1] - 1  # last token not yet fed back
    monkeypatch.undo()
    # Same tokens as a model without a global contribution at all (uncached forward).
    full = _uncached_logits(model, out)
    assert torch.equal(out[0, 7:], full[0, 6:-1].argmax(-1))


def test_beam_search_with_the_cache_equals_without(base_model):
    model = _model(base_model)
    prompt = torch.randint(1, base_model.config.vocab_size, (2, 9))
    kw = dict(max_new_tokens=6, num_beams=3, do_sample=False, pad_token_id=0)
    cached = model.generate(prompt, use_cache=True, **kw)
    uncached = model.generate(prompt, use_cache=False, **kw)
    assert torch.equal(cached, uncached)


def test_a_dynamic_cache_passed_by_the_caller_still_works(base_model):
    model = _model(base_model)
    prompt = torch.randint(1, base_model.config.vocab_size, (1, 9))
    a = model.generate(prompt, max_new_tokens=6, do_sample=False, past_key_values=DynamicCache())
    b = model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(a, b)


def test_cache_bytes_counted_from_first_principles(base_model):
    """2 layers, 2 KV heads x head_dim 16, fp32: each cached token costs 2 (k, v) x 2 x 16
    x 4 bytes = 256 bytes per slot."""
    model = _model(base_model)
    head_dim = model.model.layers[0].self_attn.local_attn.head_dim
    assert (model.config.num_key_value_heads, head_dim) == (2, 16)
    ids = torch.randint(1, base_model.config.vocab_size, (1, 20))
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
    per_token = 256
    expected = 2 * (20 + (WINDOW - 1)) * per_token  # per layer: global 20, local 3 tokens
    assert cache.kv_bytes() == expected
    assert cache.allocated_bytes() == expected  # the prefill is stored without margin
    assert kv_cache_bytes(model.config, 20, itemsize=4) == expected


def test_qwen3_8b_cache_against_the_base_model():
    """Qwen3-8B: 36 layers, 8 KV heads x 128, bf16 -> 147,456 bytes per token in the base
    model. L2A with window 4095 adds 4094 tokens per layer of local cache; pruning half of
    the layers to local-only drops their global cache."""
    cfg = L2AQwen3Config(
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        hidden_size=4096,
        l2a_window=4095,
    )
    base_per_token = 36 * 2 * 8 * 128 * 2
    assert base_per_token == 147_456
    for ctx in (32768, 65536, 131072):
        base = ctx * base_per_token
        l2a = kv_cache_bytes(cfg, ctx)
        assert l2a == base + 36 * 4094 * 2 * 8 * 128 * 2
    ratio = {ctx: kv_cache_bytes(cfg, ctx) / (ctx * base_per_token) for ctx in (32768, 131072)}
    assert ratio[32768] == pytest.approx(1 + 4094 / 32768)  # 1.125: the window's share
    assert ratio[131072] == pytest.approx(1 + 4094 / 131072) and ratio[131072] <= 1.05
    cfg.l2a_global_layers = list(range(0, 36, 2))
    half = kv_cache_bytes(cfg, 131072) / (131072 * base_per_token)
    assert half == pytest.approx(0.5 + 4094 / 131072)  # 0.531


def test_quantized_cache_implementation_is_refused(base_model):
    """transformers' own caches have one slot per decoder layer ("static" builds the L2A
    static cache: tests/l2a/test_static_cache.py)."""
    model = _model(base_model)
    prompt = torch.randint(1, base_model.config.vocab_size, (1, 5))
    with pytest.raises(ValueError, match="L2A models generate with their own caches"):
        model.generate(prompt, max_new_tokens=2, cache_implementation="quantized")


def test_generate_with_prefill_chunks(base_model):
    """transformers' own chunked prefill (generation_config.prefill_chunk_size) on the L2A
    cache gives the tokens of a single prefill."""
    model = _model(base_model)
    prompt = torch.randint(1, base_model.config.vocab_size, (1, 13))
    a = model.generate(prompt, max_new_tokens=6, do_sample=False, prefill_chunk_size=4)
    b = model.generate(prompt, max_new_tokens=6, do_sample=False)
    assert torch.equal(a, b)
