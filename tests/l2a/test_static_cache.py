"""The static L2A cache (l2a/static_cache.py): greedy decoding equals the uncached forward's
argmax (fp32, CPU, prompts longer than the window so the rings wrap, a mixture of routed
and unrouted tokens), through generate and through the graph decoder's static-buffer step;
chunked prefill, left padding, beam search; batch rows that route differently; what the
buffers hold, in bytes from first principles."""

from __future__ import annotations

import pytest
import torch
from padding_helpers import left_padded
from test_cache import WINDOW, _model  # the tiny L2A model with a route mixture
from transformers import GenerationConfig
from transformers.generation.configuration_utils import CompileConfig

from l2a.cache import L2ACache
from l2a.convert import convert_model
from l2a.decode_graph import GraphedDecoder
from l2a.static_cache import L2AStaticCache

TOL = dict(atol=1e-4, rtol=1e-4)


def _uncached(model, ids, mask=None):
    pos = None if mask is None else (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, position_ids=pos, use_cache=False)
    return out.logits, torch.stack(out.routes)  # routes: (layers, B, T)


def _generate(model, ids, mask=None, n=8, **kw):
    out = model.generate(
        ids, attention_mask=mask, max_new_tokens=n, do_sample=False, return_dict_in_generate=True,
        output_logits=True, pad_token_id=0, **kw,
    )
    return out.sequences, torch.stack(out.logits, dim=1), out.past_key_values


def test_generate_with_the_static_cache_equals_uncached_forward(base_model):
    model = _model(base_model)
    P = 11  # > window: the rings wrap in the prefill and at every step
    prompt = torch.randint(1, base_model.config.vocab_size, (1, P))
    seq, logits, cache = _generate(model, prompt, n=10, cache_implementation="static")
    # The last generated token is never fed back: generate sizes the cache for P + 10 - 1.
    assert isinstance(cache, L2AStaticCache) and cache.max_cache_len == P + 10 - 1
    full, routes = _uncached(model, seq)
    torch.testing.assert_close(logits[0], full[0, P - 1 : -1], **TOL)
    assert torch.equal(seq[0, P:], full[0, P - 1 : -1].argmax(-1))
    decided = routes[:, 0, P:]
    assert decided.any() and not decided.all()  # routed and unrouted decoding steps


def test_static_and_growing_cache_generate_the_same(base_model):
    model = _model(base_model)
    prompt = torch.randint(1, base_model.config.vocab_size, (2, 9))
    a, la, _ = _generate(model, prompt, n=7, past_key_values=L2AStaticCache(model.config, 16))
    b, lb, _ = _generate(model, prompt, n=7, past_key_values=L2ACache(model.config))
    assert torch.equal(a, b)
    torch.testing.assert_close(la, lb, **TOL)


@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_chunked_prefill_onto_the_static_cache(base_model, chunk):
    """chunk 1: every chunk after the first is a decoding step (the fixed-shape path)."""
    model = _model(base_model)
    ids = torch.randint(1, base_model.config.vocab_size, (2, 13))
    full, _ = _uncached(model, ids)
    cache = L2AStaticCache(model.config, max_cache_len=20)
    with torch.no_grad():
        pieces = [model(ids[:, s : s + chunk], past_key_values=cache).logits for s in range(0, 13, chunk)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, **TOL)
    assert cache.get_seq_length() == 13


def test_left_padded_batch_generates_like_each_prompt_alone(base_model):
    model = _model(base_model)
    vocab = base_model.config.vocab_size
    short, long = torch.randint(1, vocab, (6,)), torch.randint(1, vocab, (10,))
    ids, mask = left_padded(short, long)
    seq, logits, _ = _generate(model, ids, mask, n=9, cache_implementation="static")
    for row, prompt in ((0, short), (1, long)):
        alone, alone_logits, _ = _generate(model, prompt[None], n=9)
        assert torch.equal(seq[row, 10:], alone[0, prompt.numel() :])
        torch.testing.assert_close(logits[row], alone_logits[0], **TOL)


def test_beam_search_with_the_static_cache(base_model):
    model = _model(base_model)
    prompt = torch.randint(1, base_model.config.vocab_size, (2, 9))
    kw = dict(max_new_tokens=6, num_beams=3, do_sample=False, pad_token_id=0)
    static = model.generate(prompt, cache_implementation="static", **kw)
    uncached = model.generate(prompt, use_cache=False, **kw)
    assert torch.equal(static, uncached)


def test_batch_rows_that_route_differently_decode_like_each_row_alone(base_model):
    """Batch 3 through the graph decoder's static-buffer step (no graph on a CPU): each row's
    tokens are the argmax of its own uncached forward, and in some step and layer the rows
    took different decisions (a row-wise route, not a batch-wide one)."""
    model = _model(base_model)
    vocab, B, P, n = base_model.config.vocab_size, 3, 9, 8
    prompt = torch.randint(1, vocab, (B, P), generator=torch.Generator().manual_seed(0))
    cache = L2AStaticCache(model.config, max_cache_len=P + n)
    decoder = GraphedDecoder(model, cache, capture=False)
    with torch.no_grad():
        nxt = model(prompt, past_key_values=cache).logits[:, -1:].argmax(-1)
    seq, step_routes = torch.cat([prompt, nxt], dim=1), []
    for _ in range(n - 1):
        logits, routes = decoder.step(nxt)
        step_routes.append(torch.stack(routes)[:, :, 0])  # (layers, B)
        nxt = logits[:, -1:].argmax(-1)
        seq = torch.cat([seq, nxt], dim=1)
    for b in range(B):
        full, _ = _uncached(model, seq[b : b + 1])
        assert torch.equal(seq[b, P:], full[0, P - 1 : -1].argmax(-1)), b
    decided = torch.stack(step_routes)  # (steps, layers, B)
    assert (decided.any(-1) & ~decided.all(-1)).any(), "no step where rows routed differently"


def test_graph_decoder_step_equals_uncached_forward(base_model):
    """The static-buffer step the CUDA graph captures (run eagerly here), over a prompt
    longer than the window with a route mixture."""
    model = _model(base_model)
    P, n = 11, 9
    prompt = torch.randint(1, base_model.config.vocab_size, (1, P))
    cache = L2AStaticCache(model.config, max_cache_len=P + n)
    decoder = GraphedDecoder(model, cache, capture=False)
    with torch.no_grad():
        logits = [model(prompt, past_key_values=cache).logits[:, -1]]
    seq = prompt
    for _ in range(n):
        nxt = logits[-1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
        step_logits, _ = decoder.step(nxt)
        logits.append(step_logits[:, -1])
    full, routes = _uncached(model, seq)
    torch.testing.assert_close(torch.stack(logits[1:], 1)[0], full[0, P:], **TOL)
    assert cache.get_seq_length() == P + n
    assert routes[:, 0, P:].any() and not routes[:, 0, P:].all()


def test_generate_takes_the_graphed_call_on_a_static_cache(base_model):
    """generate asks for the compiled decoding call on a static cache (on a CPU only when
    told to compile on every device): the L2A model's call runs the decoding steps through
    its GraphedDecoder and the tokens stay the uncached forward's argmax."""
    model = _model(base_model)
    P = 10
    prompt = torch.randint(1, base_model.config.vocab_size, (1, P))
    compile_config = CompileConfig()
    compile_config._compile_all_devices = True  # transformers' switch for non-GPU devices
    config = GenerationConfig(
        max_new_tokens=6, do_sample=False, pad_token_id=0, cache_implementation="static",
        compile_config=compile_config,
    )
    seq = model.generate(prompt, generation_config=config)
    call = model.get_compiled_call()
    assert call.decoder is not None and call.decoder.cache.get_seq_length() == P + 5
    full, _ = _uncached(model, seq)
    assert torch.equal(seq[0, P:], full[0, P - 1 : -1].argmax(-1))


def test_static_cache_bytes_from_first_principles(base_model):
    """2 layers, 2 KV heads x head_dim 16, fp32: 256 bytes per token and slot. Per layer a
    ring of `window` rows and a full buffer of max_cache_len rows; the content the next
    query may read is window - 1 ring rows and every cached token."""
    model = _model(base_model)
    cache = L2AStaticCache(model.config, max_cache_len=32)
    ids = torch.randint(1, base_model.config.vocab_size, (1, 20))
    with torch.no_grad():
        model(ids, past_key_values=cache)
    per_token = 256
    assert cache.allocated_bytes() == 2 * (WINDOW + 32) * per_token
    assert cache.kv_bytes() == 2 * ((WINDOW - 1) + 20) * per_token
    with torch.no_grad():
        grown = model(ids, use_cache=True).past_key_values  # the growing cache: same content
    assert cache.kv_bytes() == grown.kv_bytes()


def test_feeding_past_max_cache_len_is_an_error(base_model):
    model = _model(base_model)
    cache = L2AStaticCache(model.config, max_cache_len=8)
    ids = torch.randint(1, base_model.config.vocab_size, (1, 8))
    with torch.no_grad():
        model(ids, past_key_values=cache)
        with pytest.raises(ValueError, match="exceed max_cache_len=8"):
            model(ids[:, :1], past_key_values=cache)
    with pytest.raises(ValueError, match="max_cache_len must be a positive int"):
        L2AStaticCache(model.config, max_cache_len=0)


def test_other_cache_implementations_are_refused(base_model):
    model = _model(base_model)
    prompt = torch.randint(1, base_model.config.vocab_size, (1, 5))
    with pytest.raises(ValueError, match="L2A models generate with their own caches"):
        model.generate(prompt, max_new_tokens=2, cache_implementation="offloaded_static")
