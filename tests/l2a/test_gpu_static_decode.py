"""Static-cache decoding on a GPU in bf16: CUDA-graph replays give the tokens of the same
step run eagerly (bitwise: the same kernels), and those are the uncached forward's argmax
wherever its top two logits are not within bf16 noise of each other; generate with
cache_implementation="static" replays graphs; the prefill ran the backend it claims."""

from __future__ import annotations

import pytest
import torch
from test_gpu_generation import _fixed_routes

from kernels.fallbacks import clear_fallbacks, fallbacks
from l2a.convert import convert_model
from l2a.decode_graph import GraphedDecoder
from l2a.static_cache import L2AStaticCache

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# Reference logits whose top two are closer than this may swap under bf16 rounding.
NEAR_TIE = 0.05


def _model(make_base, family="qwen3"):
    kw = dict(hidden_size=256, num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096)
    if family == "qwen3":
        kw["head_dim"] = 64
    base = make_base(family, layers=3, **kw)
    model = convert_model(base, init="paper", window=64).to("cuda", torch.bfloat16).eval()
    _fixed_routes(model, routed_layers={0, 2})  # a routed and an unrouted global branch
    return model


def _decode(model, prompt, steps, capture):
    cache = L2AStaticCache(model.config, max_cache_len=prompt.shape[1] + steps)
    decoder = GraphedDecoder(model, cache, capture=capture)
    with torch.no_grad():
        nxt = model(prompt, past_key_values=cache).logits[:, -1:].argmax(-1)
        seq = torch.cat([prompt, nxt], dim=1)
        for _ in range(steps - 1):
            logits, _ = decoder.step(nxt)
            nxt = logits[:, -1:].argmax(-1)
            seq = torch.cat([seq, nxt], dim=1)
    return seq, decoder


@pytest.mark.parametrize("family", ["qwen3", "qwen2"])
def test_graph_decoding_equals_eager_and_the_uncached_argmax(make_base, family):
    clear_fallbacks()
    model = _model(make_base, family)
    torch.manual_seed(0)
    P, steps = 300, 24  # prompt > window: the rings wrap
    prompt = torch.randint(1, 301, (2, P), device="cuda")
    graphed, decoder = _decode(model, prompt, steps, capture=True)
    eager, _ = _decode(model, prompt, steps, capture=False)
    assert decoder.replays == steps - 1
    assert torch.equal(graphed, eager)
    with torch.no_grad():
        ref = model(graphed, use_cache=False).logits.float()[:, P - 1 : -1]
    top2 = ref.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > NEAR_TIE
    assert clear.float().mean() > 0.5  # the check is not vacuous
    assert torch.equal(graphed[:, P:][clear], ref.argmax(-1)[clear])
    assert fallbacks() == [], fallbacks()


def test_generate_with_the_static_cache_replays_graphs(make_base):
    model = _model(make_base)
    prompt = torch.randint(1, 301, (1, 200), device="cuda")
    out = model.generate(prompt, max_new_tokens=16, do_sample=False, cache_implementation="static", pad_token_id=0)
    call = model.get_compiled_call()
    assert call.decoder is not None and call.decoder.replays == 15
    eager = model.generate(prompt, max_new_tokens=16, do_sample=False, pad_token_id=0)  # growing cache
    assert out.shape == eager.shape
