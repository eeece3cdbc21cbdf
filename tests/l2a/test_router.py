"""Router: straight-through gradients, the stochastic dense path, decisions, statistics."""

from __future__ import annotations

import torch

from l2a import layer_sparsity, router_regulariser
from l2a.convert import convert_model


def _model(base_model, **kw):
    model = convert_model(base_model, init="paper", window=8, **kw)
    model.train()
    return model


def _set_router(model, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.model.layers:
            w = layer.self_attn.router.weight
            w.copy_(torch.randn(w.shape, generator=g) * scale)


def test_straight_through_forward_value_is_hard_decision(base_model):
    model = _model(base_model)
    _set_router(model, scale=0.3)
    ids = torch.randint(0, base_model.config.vocab_size, (2, 33))
    out = model(ids)
    for p, d in zip(out.router_probs, out.routes):
        assert d.dtype == torch.bool
        assert torch.equal(d, p >= 0.5)
    # A mixed decision, so that both cases are exercised.
    assert 0 < torch.cat(out.routes).float().mean() < 1


def test_router_receives_gradient_through_straight_through(base_model):
    model = _model(base_model)
    _set_router(model, scale=0.3)
    ids = torch.randint(0, base_model.config.vocab_size, (2, 33))
    model(ids, labels=ids).loss.backward()
    for layer in model.model.layers:
        grad = layer.self_attn.router.weight.grad
        assert grad is not None and grad.abs().sum() > 0


def _router_grad_from_unrouted(base_model, dense):
    """Gradient of sum(logits) w.r.t. the router, restricted to tokens with d = 0, by
    making the LM loss depend only on those tokens' outputs."""
    model = _model(base_model)
    _set_router(model, seed=3, scale=0.3)
    ids = torch.randint(0, base_model.config.vocab_size, (1, 40))
    with torch.no_grad():
        routes = model(ids).routes
    last = model.model.layers[-1].self_attn
    unrouted = ~routes[-1][0]
    assert unrouted.any()
    out = model(ids, l2a_dense=dense)
    # Only tokens at or after... restrict to unrouted positions of the last layer: for them
    # the router gradient of the last layer can only come through d~ * a.
    (out.logits[0, unrouted].sum()).backward()
    return last.router.weight.grad


def test_dense_path_gives_router_gradient_for_unrouted_tokens(base_model):
    sparse_grad = _router_grad_from_unrouted(base_model, dense=False)
    dense_grad = _router_grad_from_unrouted(base_model, dense=True)
    # Without the dense path a_t = 0 at unrouted tokens, so the gate's gradient is zero.
    assert sparse_grad is None or sparse_grad.abs().max() == 0
    assert dense_grad.abs().max() > 0


def test_dense_path_keeps_forward_value(base_model):
    """The dense path computes every query but the output is still gated by d."""
    model = _model(base_model)
    _set_router(model, scale=0.3)
    ids = torch.randint(0, base_model.config.vocab_size, (2, 21))
    with torch.no_grad():
        a = model(ids).logits
        b = model(ids, l2a_dense=True).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_regulariser_and_sparsity_from_outputs(base_model):
    model = _model(base_model)
    _set_router(model, scale=0.3)
    ids = torch.randint(0, base_model.config.vocab_size, (2, 17))
    mask = torch.ones(2, 17, dtype=torch.bool)
    mask[1, 12:] = False
    out = model(ids)
    reg = router_regulariser(out.router_probs, mask)
    by_hand = sum(((p**2) * mask).sum(-1).mean() for p in out.router_probs) / len(out.router_probs)
    torch.testing.assert_close(reg, by_hand)
    sp = layer_sparsity(out.routes, mask)
    for s, d in zip(sp, out.routes):
        torch.testing.assert_close(s, (~d[mask]).float().mean())
    reg.backward()
    assert model.model.layers[0].self_attn.router.weight.grad.abs().sum() > 0


def test_l2a_layers_subset(base_model):
    model = convert_model(base_model, init="identity", window=8, layers=[1])
    ids = torch.randint(0, base_model.config.vocab_size, (1, 20))
    out = model(ids)
    assert len(out.router_probs) == 1
    torch.testing.assert_close(out.logits, base_model(ids).logits, atol=2e-5, rtol=1e-5)
