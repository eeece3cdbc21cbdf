"""One forward + backward of a tiny L2A model whose router also gets a gradient, for tests
that compare two paths of the model (routed projections, fused elementwise regions)."""

from __future__ import annotations


def loss_outputs_grads(model, ids, pos, dense: bool = False):
    """-> (loss, outputs, {name: grad}); the router's straight-through gradient flows
    through a small regulariser on its probabilities and through the gate."""
    model.zero_grad(set_to_none=True)
    out = model(ids, position_ids=pos, labels=ids, l2a_dense=dense)
    loss = out.loss + 0.1 * sum(p.mean() for p in out.router_probs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), out, grads


def mixed_router_model(make_base, family: str, layers: int = 2):
    """A tiny L2A model in train mode whose routers route a mixture of tokens (a router at
    zero, as converted, routes every token). Qwen3 with attention_bias: o_proj has a bias,
    which every token's gate carries (the one place unrouted rows reach the loss)."""
    import torch

    from l2a.convert import convert_model

    extra = {"attention_bias": True} if family == "qwen3" else {}
    model = convert_model(make_base(family, layers=layers, **extra), init="paper", window=6)
    torch.manual_seed(3)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.router.weight.normal_(0, 0.3)
    return model.train()


def assert_same_run(a, b, rtol: float, atol: float) -> None:
    """Two `loss_outputs_grads` results: the same loss, router outputs, decisions and
    gradient of every parameter."""
    import torch

    torch.testing.assert_close(a[0], b[0], rtol=rtol, atol=atol)
    for pa, pb, da, db in zip(a[1].router_probs, b[1].router_probs, a[1].routes, b[1].routes):
        torch.testing.assert_close(pa, pb, rtol=rtol, atol=atol)
        assert torch.equal(da, db)
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        torch.testing.assert_close(a[2][name], b[2][name], rtol=rtol, atol=atol, msg=name)
