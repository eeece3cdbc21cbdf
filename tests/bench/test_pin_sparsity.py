"""bench.pin_sparsity: every global L2A layer routes exactly the top (1 - target) of each row
by router logit, with the layer's own soft p, deterministically."""

from __future__ import annotations

import torch
from torch import nn

from bench.pin_sparsity import pin_routed_fraction
from l2a.convert import convert_model
from l2a.layers import L2AAttention

T = 37  # odd: (1 - 0.8) * 37 = 7.4, so 7 tokens routed per row
ROUTED = 7


def _tiny_l2a(make_base):
    model = convert_model(make_base("qwen3", layers=3), init="paper", window=8)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model.model.layers:
            w = layer.self_attn.router.weight
            w.copy_(torch.randn(w.shape, generator=g) * 0.3)
    return model.train()


def _global_layers(model):
    return [m for m in model.modules() if isinstance(m, L2AAttention) and m.has_global]


def test_pinned_route_keeps_p_and_routes_the_top_logits(make_base):
    model = _tiny_l2a(make_base)
    layers = _global_layers(model)
    assert len(layers) == 3
    g = torch.randn(2, T, model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    unpinned = []
    for layer in layers:
        p, d = layer.route(g)
        p.sum().backward()
        unpinned.append((p.detach(), d, layer.router.weight.grad.clone()))
        layer.router.weight.grad = None
    # Found through a wrapper (the trainer's loss module / the DeepSpeed engine).
    assert pin_routed_fraction(nn.ModuleDict({"lm": model}), 0.8) == 3
    for layer, (p_ref, d_ref, grad_ref) in zip(layers, unpinned):
        p, d = layer.route(g)
        assert torch.equal(p, p_ref)  # the soft p is the layer's own ...
        p.sum().backward()
        assert torch.equal(layer.router.weight.grad, grad_ref)  # ... with the same gradient
        assert d.dtype == torch.bool and d.shape == (2, T)
        assert (d.sum(-1) == ROUTED).all(), d.sum(-1)
        assert not torch.equal(d, d_ref)  # the threshold's decision is replaced
        logit = (g @ layer.router.weight.detach().t()).squeeze(-1)
        for row in range(2):
            top = set(logit[row].argsort(descending=True)[:ROUTED].tolist())
            assert set(d[row].nonzero().flatten().tolist()) == top
            assert logit[row][d[row]].min() > logit[row][~d[row]].max()
        # Activation checkpointing recomputes route on the same g: the same decision.
        assert torch.equal(layer.route(g)[1], d)


def test_pinned_model_forward_routes_the_fraction_in_every_layer(make_base):
    model = _tiny_l2a(make_base)
    pin_routed_fraction(model, 0.8)
    ids = torch.randint(0, model.config.vocab_size, (2, T), generator=torch.Generator().manual_seed(3))
    out = model(ids, labels=ids)
    assert len(out.routes) == 3
    for d in out.routes:
        assert (d.sum(-1) == ROUTED).all(), d.sum(-1)
    out.loss.backward()  # the layer's backward through the pinned decisions runs
