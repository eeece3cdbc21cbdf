"""The global branch's attention on a stochastic dense-path step: dense forward, token-sparse
backward.

On a dense-path step the global branch attends for every token so that the router gets a
gradient for the tokens it switched off: `dL/dp_t = a_t . dL/dx_t` needs the branch output
`a_t` of every token. But the output enters the stream through the straight-through gate,
whose forward value is the hard decision `d_t`, so the gradient reaching `a_t` is
`d_t * dL/dx_t`: zero at every unrouted token. Zero output-gradient rows add nothing to dQ,
dK or dV (dV = P^T dO, and dS = P * (dO V^T - rowsum(dO * O)) vanishes on those rows).
So the backward of the dense forward equals the backward of token-sparse attention over the
routed queries: this function runs the dense kernel forward and, in the backward, the
token-sparse kernel again on the routed rows (a forward and a backward at the routed
fraction) instead of the dense backward, about 2.5x the dense forward's time.

In the capacity layout of the routed rows (config `l2a_routed_rows: capacity`) the backward's
token-sparse attention runs through the branch's routed core on the queries permuted
routed-first (`routed_slots(route, capacity=True)`, T rows): no shape is the routed count, so
the backward reads nothing from the device, as the routed path's forward does not.
"""

from __future__ import annotations

import torch

from kernels.token_sparse.compact import gather_rows, routed_slots, scatter_rows


class _DenseForwardRoutedBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, route, core, routed_core, doc_ids, scale, backend):
        ctx.save_for_backward(q, k, v, route)
        ctx.core, ctx.routed_core = core, routed_core
        ctx.doc_ids, ctx.scale, ctx.backend = doc_ids, scale, backend
        return core(q, k, v, None, None, doc_ids, scale, backend)

    @staticmethod
    def backward(ctx, grad_o):
        q, k, v, route = ctx.saved_tensors
        inputs = [t.detach().requires_grad_(need) for t, need in zip((q, k, v), ctx.needs_input_grad)]
        with torch.enable_grad():
            if ctx.routed_core is None:
                o = ctx.core(*inputs, route, None, ctx.doc_ids, ctx.scale, ctx.backend)
            else:
                o = _capacity_rows_attention(ctx.routed_core, *inputs, route, ctx.doc_ids, ctx.scale,
                                             ctx.backend)
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(torch.autograd.grad(o, wanted, grad_o) if wanted else ())
        return (*(next(grads) if t.requires_grad else None for t in inputs), *(None,) * 6)


def _capacity_rows_attention(routed_core, q, k, v, route, doc_ids, scale, backend):
    """Token-sparse attention of the routed rows of `q (B, Hq, T, D)` through the routed core
    in the capacity layout: the rows permuted routed-first (a device-side permutation, no host
    read), attended (padding rows come out zero), put back at their positions."""
    slots, valid = routed_slots(route, capacity=True)
    o_c = routed_core(gather_rows(q, slots), k, v, route, doc_ids, scale, backend, slots, valid)
    return scatter_rows(o_c, slots, q.shape[2])


def dense_forward_routed_backward(core, q, k, v, route, doc_ids, scale, backend, routed_core=None):
    """`core(q, k, v, None, None, ...)` (dense causal attention of every query) whose backward
    is that of `core(q, k, v, route, None, ...)` (token-sparse over the routed queries):
    exact when the output's gradient is zero at unrouted rows, as the gate makes it on a
    dense-path step. `core`: the branch's attention core (wrapped by sequence parallelism,
    whose exchanges then also run in the backward, on every rank alike). `routed_core` (the
    capacity layout): the backward's token-sparse attention through it instead, on the
    queries in the capacity layout (`l2a.layers.routed_query_core`'s signature)."""
    return _DenseForwardRoutedBackward.apply(q, k, v, route, core, routed_core, doc_ids, scale, backend)
