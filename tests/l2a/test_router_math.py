"""The router and the straight-through gate against a computation by hand (the method page):

    p_t = sigmoid(w . g_t / tau),   d_t = 1[p_t >= threshold],
    x_out = x_mid + d~_t * a_t,     d~_t = d_t + p_t - stopgrad(p_t),
    dL/dw = sum_t dL/dd~_t * p_t (1 - p_t) / tau * g_t,   dL/dd~_t = <dL/dx_out_t, a_t>.

g_t (the normed stream after the local branch), a_t (the global branch's output) and
dL/dx_out are read from the model with hooks; everything else is computed here in float64.
"""

from __future__ import annotations

import pytest
import torch

from l2a.convert import convert_model

TAU = 0.25  # not the default 0.1, and far from 1, so that a dropped tau shows


def _model(base_model):
    model = convert_model(base_model, init="paper", window=8, router_tau=TAU)
    model.train()
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for layer in model.model.layers:
            w = layer.self_attn.router.weight
            w.copy_(torch.randn(w.shape, generator=g) * 0.05)
    return model


def _run_with_taps(model, ids):
    """Forward + backward of a random linear function of the logits; returns per layer the
    tapped g, a, x_mid, x_out (with its gradient), and the model's p and d."""
    taps = [{} for _ in model.model.layers]
    handles = []
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn

        def norm_hook(_m, args, out, t=taps[i]):
            t["x_mid"], t["g"] = args[0].detach(), out.detach()

        def attn_hook(proj, args, _out, t=taps[i]):
            # a_t = o_proj(o_t): the global o_proj also performs the gated add
            # (l2a/gated_output.py), so a is recomputed from its input.
            with torch.no_grad():
                t["a"] = torch.nn.functional.linear(args[0], proj.weight, proj.bias)

        def block_hook(_m, _args, out, t=taps[i]):
            out[0].retain_grad()
            t["x_out"] = out[0]

        handles += [attn.global_norm.register_forward_hook(norm_hook),
                    attn.global_attn.o_proj.register_forward_hook(attn_hook),
                    attn.register_forward_hook(block_hook)]
    try:
        out = model(ids)
        proj = torch.randn(out.logits.shape, generator=torch.Generator().manual_seed(5))
        (out.logits * proj).sum().backward()
    finally:
        for h in handles:
            h.remove()
    for t, p, d in zip(taps, out.router_probs, out.routes):
        t["p"], t["d"] = p.detach(), d
    return taps


@pytest.fixture
def tapped(base_model):
    model = _model(base_model)
    ids = torch.randint(0, base_model.config.vocab_size, (2, 29), generator=torch.Generator().manual_seed(1))
    taps = _run_with_taps(model, ids)
    # Both decisions occur, so the gate's forward value and gradient are both exercised.
    routed = torch.cat([t["d"].flatten() for t in taps]).float().mean()
    assert 0.1 < routed < 0.9, routed
    return model, taps


def test_router_probability_is_sigmoid_of_logit_over_tau(tapped):
    model, taps = tapped
    for layer, t in zip(model.model.layers, taps):
        w = layer.self_attn.router.weight.detach().double().squeeze(0)
        logit = t["g"].double() @ w
        p = 1.0 / (1.0 + torch.exp(-logit / TAU))
        torch.testing.assert_close(t["p"].double(), p, rtol=1e-5, atol=1e-6)
        assert torch.equal(t["d"], p >= 0.5)


def test_gate_forward_value_is_the_hard_decision(tapped):
    """x_out - x_mid = d_t * a_t exactly: 0 or the whole global output, never p_t * a_t."""
    _, taps = tapped
    for t in taps:
        added = t["x_out"].detach() - t["x_mid"]
        torch.testing.assert_close(added, t["d"].unsqueeze(-1).to(added.dtype) * t["a"],
                                   rtol=1e-5, atol=1e-6)


def test_router_gradient_matches_hand_computation(tapped):
    model, taps = tapped
    for layer, t in zip(model.model.layers, taps):
        p = t["p"].double()
        dgate = (t["x_out"].grad.double() * t["a"].double()).sum(-1)  # dL/dd~_t, (B, T)
        by_hand = ((dgate * p * (1 - p) / TAU).unsqueeze(-1) * t["g"].double()).sum((0, 1))
        got = layer.self_attn.router.weight.grad.double().squeeze(0)
        assert by_hand.norm() > 0
        err = (got - by_hand).norm() / by_hand.norm()
        assert err < 1e-4, f"layer {layer.layer_idx}: relative error {err:.3g}"
