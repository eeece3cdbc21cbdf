"""Generation on a GPU in bf16 through the kernels: chunked prefill (queries against the
cached keys, Triton with a query offset), left padding (a document of its own) and decoding
steps (folded SDPA) against the uncached forward (Triton, queries = keys)."""

from __future__ import annotations

import pytest
import torch

from l2a.cache import L2ACache
from l2a.convert import convert_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _fixed_routes(model, routed_layers):
    """Layer i routes every token if i in routed_layers, none otherwise: bf16 rounding must
    not flip decisions between the cached and uncached paths (that would change tokens
    wholesale and say nothing about the kernels). Both global paths still run: a routed
    layer through the kernels, an unrouted one through the cache-only step."""
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        on = i in routed_layers
        attn.route = lambda g, route=attn.route, on=on: (
            route(g)[0],
            torch.full(g.shape[:2], on, dtype=torch.bool, device=g.device),
        )


@pytest.mark.parametrize("family", ["qwen3", "qwen2"])
def test_gpu_generation_matches_uncached_forward(make_base, family):
    kw = dict(
        hidden_size=256, num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096
    )
    if family == "qwen3":
        kw["head_dim"] = 64
    base = make_base(family, layers=3, **kw)
    model = convert_model(base, init="paper", window=64).to("cuda", torch.bfloat16).eval()
    _fixed_routes(model, routed_layers={0, 2})
    torch.manual_seed(0)
    T, pad, chunk, steps = 700, 100, 256, 6
    ids = torch.randint(1, 301, (2, T), device="cuda")
    mask = torch.ones_like(ids)
    mask[0, :pad] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = L2ACache(model.config)
    with torch.no_grad():
        pieces = []
        for s in range(0, T, chunk):
            e = min(T, s + chunk)
            out = model(
                ids[:, s:e],
                attention_mask=mask[:, :e],
                position_ids=pos[:, s:e],
                past_key_values=cache,
            )
            pieces.append(out.logits.float())
        seq, logits = ids, [pieces[-1][:, -1]]
        for _ in range(steps):
            nxt = logits[-1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
            out = model(
                nxt,
                attention_mask=mask,
                position_ids=pos[:, -1:] + len(logits),
                past_key_values=cache,
            )
            logits.append(out.logits.float()[:, -1])
        full_pos = (mask.cumsum(-1) - 1).clamp(min=0)
        full = model(
            seq, attention_mask=mask, position_ids=full_pos, use_cache=False
        ).logits.float()
    prefill = torch.cat(pieces, dim=1)
    for row, start in ((0, pad), (1, 0)):
        ref = full[row, start:T]
        rel = (prefill[row, start:] - ref).norm() / ref.norm()
        assert rel < 2e-2, (row, float(rel))
    steps_logits = torch.stack(logits[1:], dim=1)
    ref = full[:, T:]
    rel = (steps_logits - ref).norm() / ref.norm()
    assert rel < 2e-2, float(rel)
    assert cache.layers[0].keys.shape[2] == 63 and cache.layers[1].keys.shape[2] == T + steps
