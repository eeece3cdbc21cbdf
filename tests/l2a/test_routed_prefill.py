"""Routed-only global projections in a prefill onto the L2A cache (``l2a_routed_projections``):
the global branch projects queries and output for routed tokens only, keys and values for
every token (they go in the cache). Greedy generation, chunked prefill and a left-padded
batch must give the logits of the uncached forward (fp32, CPU: the full-projection path,
independent of the code under test); a hook checks that the routed path actually ran. In
the capacity layout of the routed rows (``l2a_routed_rows: capacity``) prompt chunks onto the
cache give the count layout's logits."""

from __future__ import annotations

import pytest
import torch
from padding_helpers import left_padded

from kernels.decode import DECODE_MAX_QUERIES
from l2a.cache import L2ACache
from l2a.convert import convert_model

PROMPT = DECODE_MAX_QUERIES + 25  # a prefill, not a decoding step
WINDOW = 6
TOL = dict(atol=1e-4, rtol=1e-4)


def _model(make_base, family):
    # Qwen3 with attention_bias: o_proj has a bias, which unrouted rows still receive.
    extra = {"attention_bias": True} if family == "qwen3" else {}
    model = convert_model(make_base(family, **extra), init="paper", window=WINDOW)
    torch.manual_seed(1)
    with torch.no_grad():  # a mixed routing decision in every layer
        for layer in model.model.layers:
            layer.self_attn.router.weight.normal_(0, 0.5)
    return model.eval()


def _uncached(model, ids, mask=None):
    """Logits and routes of the uncached forward with full projections (the reference)."""
    model.l2a_runtime.routed_projections = False
    pos = None if mask is None else (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, position_ids=pos, use_cache=False)
    model.l2a_runtime.routed_projections = True
    return out.logits, out.routes


def _q_rows(model):
    """Rows each global q_proj call sees, in call order."""
    rows = []
    for layer in model.model.layers:
        layer.self_attn.global_attn.q_proj.register_forward_hook(
            lambda m, i, o: rows.append(i[0].shape[1])
        )
    return rows


def test_greedy_generation_equals_uncached_forward(make_base, family):
    model = _model(make_base, family)
    model.l2a_runtime.routed_projections = True
    rows = _q_rows(model)
    prompt = torch.randint(1, model.config.vocab_size, (1, PROMPT))
    out = model.generate(
        prompt, max_new_tokens=6, do_sample=False, return_dict_in_generate=True,
        output_logits=True, pad_token_id=0,
    )
    seq, logits = out.sequences, torch.stack(out.logits, dim=1)
    full, routes = _uncached(model, seq)
    torch.testing.assert_close(logits[0], full[0, PROMPT - 1 : -1], **TOL)
    assert torch.equal(seq[0, PROMPT:], full[0, PROMPT - 1 : -1].argmax(-1))
    # The prefill projected queries for the routed rows only (R < prompt, R > 0).
    n = model.config.num_hidden_layers
    counts = [int(r[0, :PROMPT].sum()) for r in routes]
    assert rows[:n] == counts and all(0 < c < PROMPT for c in counts), (rows[:n], counts)


@pytest.mark.parametrize("chunk", [DECODE_MAX_QUERIES + 1, 2 * DECODE_MAX_QUERIES + 3])
def test_chunked_prefill_equals_uncached_forward(make_base, chunk):
    """Chunks longer than a decoding step: compacted queries against the cached keys."""
    model = _model(make_base, "qwen3")
    model.l2a_runtime.routed_projections = True
    ids = torch.randint(1, model.config.vocab_size, (2, 3 * DECODE_MAX_QUERIES + 7))
    rows = _q_rows(model)
    cache = L2ACache(model.config)
    pieces = []
    with torch.no_grad():
        for s in range(0, ids.shape[1], chunk):
            pieces.append(model(ids[:, s : s + chunk], past_key_values=cache).logits)
    cached_rows = list(rows)
    full, _ = _uncached(model, ids)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, **TOL)
    assert cache.get_seq_length() == ids.shape[1]
    assert cache.layers[1].keys.shape[2] == ids.shape[1]  # every token's global keys
    assert max(cached_rows) < chunk  # only routed rows projected (of a chunk or a shorter tail)


@pytest.mark.parametrize("layout", ["count", "capacity"])
def test_left_padded_prefill_equals_each_prompt_alone(make_base, layout):
    model = _model(make_base, "qwen2")
    model.l2a_runtime.routed_projections = True
    model.l2a_runtime.routed_rows = layout
    vocab = model.config.vocab_size
    short, long = torch.randint(1, vocab, (PROMPT - 9,)), torch.randint(1, vocab, (PROMPT,))
    ids, mask = left_padded(short, long)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        cached = model(ids, attention_mask=mask, position_ids=pos, use_cache=True).logits
    for row, prompt in ((0, short), (1, long)):
        alone, _ = _uncached(model, prompt[None])
        torch.testing.assert_close(cached[row, -prompt.numel() :], alone[0], **TOL)


@pytest.mark.parametrize("chunk", [DECODE_MAX_QUERIES + 1, 2 * DECODE_MAX_QUERIES + 3])
def test_capacity_prefill_onto_the_cache_equals_the_count_layout(make_base, chunk):
    """``l2a_routed_rows: capacity`` in prompt chunks onto a KV cache: each chunk's compacted
    queries are all its rows (routed first; the route is over the chunk's queries, the last
    of the cached keys). The logits of every chunk and of the decoding step after them (which
    reads the keys the chunks cached) equal the count layout's and the uncached forward's."""
    model = _model(make_base, "qwen3")
    model.l2a_runtime.routed_projections = True
    vocab, n = model.config.vocab_size, model.config.num_hidden_layers
    # Every chunk a prefill (the tail too: longer than a decoding step), then one step.
    ids = torch.randint(1, vocab, (2, 2 * chunk + DECODE_MAX_QUERIES + 2))
    prompt, last = ids[:, :-1], ids[:, -1:]
    starts = range(0, prompt.shape[1], chunk)
    rows = _q_rows(model)
    runs = {}
    for layout in ("count", "capacity"):
        model.l2a_runtime.routed_rows = layout
        rows.clear()
        cache = L2ACache(model.config)
        with torch.no_grad():
            pieces = [model(prompt[:, s : s + chunk], past_key_values=cache).logits for s in starts]
            step = model(last, past_key_values=cache).logits
        assert cache.get_seq_length() == ids.shape[1]
        runs[layout] = torch.cat([*pieces, step], dim=1), list(rows)
    model.l2a_runtime.routed_rows = "count"
    full, routes = _uncached(model, ids)
    (count, count_rows), (capacity, capacity_rows) = runs["count"], runs["capacity"]
    torch.testing.assert_close(capacity, count, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(capacity, full, **TOL)
    # Every row of a chunk projected, the count layout fewer: the largest routed count of
    # the chunk's rows. Then the decoding step's one row, on the full path (in the layers
    # where its token is routed in some batch row; the others only cache keys).
    lengths = [min(chunk, prompt.shape[1] - s) for s in starts]
    step_rows = [1 for r in routes if r[:, -1].any()]
    assert capacity_rows == [t for t in lengths for _ in range(n)] + step_rows
    routed = [int(r[:, s : s + t].sum(1).max()) for s, t in zip(starts, lengths) for r in routes]
    assert count_rows == routed + step_rows and any(c < t for c, t in zip(routed, capacity_rows))


def test_decoding_steps_keep_the_full_path(make_base):
    """A decoding step (<= DECODE_MAX_QUERIES tokens) projects its few rows in full."""
    model = _model(make_base, "qwen3")
    model.l2a_runtime.routed_projections = True
    for layer in model.model.layers:  # every token routed: the global branch always runs
        layer.self_attn.logit_threshold = float("-inf")
    cache = L2ACache(model.config)
    ids = torch.randint(1, model.config.vocab_size, (1, PROMPT + 1))
    with torch.no_grad():
        model(ids[:, :PROMPT], past_key_values=cache)
        rows = _q_rows(model)
        step = model(ids[:, PROMPT:], past_key_values=cache).logits
    assert rows == [1] * model.config.num_hidden_layers
    full, _ = _uncached(model, ids)
    torch.testing.assert_close(step[0, -1], full[0, -1], **TOL)


@pytest.mark.parametrize("routed", [True, False], ids=["routed", "full"])
def test_fused_prefill_onto_the_cache(make_base, monkeypatch, routed):
    """``l2a_fused_elementwise`` in a prefill with a cache (decoding steps stay unfused):
    the fused functions run eagerly here (compile replaced by a counting identity; their
    compiled kernels are tests/l2a/test_fused.py's), the logits are the uncached forward's."""
    import l2a.layers

    calls = []
    monkeypatch.setattr(l2a.layers, "compiled", lambda fn: calls.append(fn.__name__) or fn)
    model = _model(make_base, "qwen3")
    ids = torch.randint(1, model.config.vocab_size, (1, PROMPT + 1))
    full, _ = _uncached(model, ids)
    model.l2a_runtime.routed_projections = routed
    model.l2a_runtime.fused_elementwise = True
    cache = L2ACache(model.config)
    with torch.no_grad():
        prefill = model(ids[:, :PROMPT], past_key_values=cache).logits
        assert {"norm_rope", "add_rms_norm", "router"} <= set(calls)
        n_prefill = len(calls)
        step = model(ids[:, PROMPT:], past_key_values=cache).logits
    assert len(calls) == n_prefill  # the decoding step ran the module path
    torch.testing.assert_close(prefill[0], full[0, :PROMPT], **TOL)
    torch.testing.assert_close(step[0, -1], full[0, -1], **TOL)
