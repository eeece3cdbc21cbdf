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
