"""The stochastic dense path: dense causal forward, token-sparse backward.

Every token attending is plain causal attention, so a dense-path step hands the global
branch's core no route (and no window) in the forward instead of an all-ones route to the
token-sparse kernel; the gate's forward value d zeroes the output gradient of unrouted rows,
so the backward runs the core token-sparse over the routed rows (l2a/dense_path.py). The
expectation comes from the method, not from the code: the step must give the same loss and
the same gradient for every parameter as attention over every token with a full backward,
on an odd length, with two packed documents and GQA (4 query heads, 2 KV heads).
"""

from __future__ import annotations

import torch

from kernels import token_sparse_attention
from l2a.convert import convert_model
from test_router import _set_router


T = 37  # odd; two documents of 20 and 17 tokens


def _inputs(vocab):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, vocab, (1, T), generator=g)
    pos = torch.cat([torch.arange(20), torch.arange(T - 20)]).unsqueeze(0)
    return ids, pos


def _dense_step(model, ids, pos):
    model.zero_grad(set_to_none=True)
    out = model(ids, position_ids=pos, labels=ids, l2a_dense=True)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), grads, out.routes


def _all_routed_core(calls):
    def core(q, k, v, route, window, doc_ids, scale, backend):
        calls.append((route, window))
        ones = torch.ones(q.shape[0], q.shape[2], dtype=torch.bool, device=q.device)
        return token_sparse_attention(q, k, v, ones, doc_ids, scale, backend=backend)
    return core


def test_dense_path_uses_the_dense_kernel_with_the_same_gradients(base_model):
    model = convert_model(base_model, init="paper", window=8)
    model.train()
    _set_router(model, seed=1, scale=0.3)
    ids, pos = _inputs(base_model.config.vocab_size)

    seen = []
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn.global_attn
        inner = attn.attention_core

        def spy(q, k, v, route, window, *rest, _inner=inner, _i=i):
            seen.append((_i, route, window, torch.is_grad_enabled()))
            return _inner(q, k, v, route, window, *rest)
        attn.attention_core = spy
    loss, grads, routes = _dense_step(model, ids, pos)
    layers = len(model.model.layers)
    # Forward: every query (no route, no window); backward: the layer's routed queries only.
    forward, backward = seen[:layers], seen[layers:]
    assert [(i, r, w) for i, r, w, _ in forward] == [(i, None, None) for i in range(layers)]
    assert sorted(i for i, *_ in backward) == list(range(layers))
    for i, route, window, grad_enabled in backward:
        assert window is None and grad_enabled and torch.equal(route, routes[i]), i
    assert all(0 < r.float().mean() < 1 for r in routes)  # decisions that matter

    reference_calls = []  # every call attends for every token: a full backward
    for layer in model.model.layers:
        layer.self_attn.global_attn.attention_core = _all_routed_core(reference_calls)
    ref_loss, ref_grads, _ = _dense_step(model, ids, pos)
    assert len(reference_calls) == 2 * layers

    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    assert grads.keys() == ref_grads.keys()
    # The global branch's projections and the router get their gradient through this path.
    assert any("global_attn.q_proj" in n for n in grads) and any("router" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_capacity_dense_path_backward_through_the_routed_core(base_model):
    """`l2a.routed_rows=capacity`: a dense-path step's backward runs through the routed core on
    every row (T rows, routed first; the count layout's R is never a shape), and the step's
    loss and gradients equal the count layout's and the full backward's."""
    model = convert_model(base_model, init="paper", window=8)
    model.train()
    _set_router(model, seed=1, scale=0.3)
    ids, pos = _inputs(base_model.config.vocab_size)
    run = model.l2a_runtime
    run.routed_projections = True

    routed_calls = []
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn.global_attn
        inner = attn.routed_attention_core

        def spy(q_c, *rest, _inner=inner, _i=i):
            routed_calls.append((_i, q_c.shape[2], torch.is_grad_enabled()))
            return _inner(q_c, *rest)
        attn.routed_attention_core = spy

    run.routed_rows = "count"
    count_loss, count_grads, _ = _dense_step(model, ids, pos)
    assert routed_calls == []  # the count layout's backward goes through the positional core
    run.routed_rows = "capacity"
    loss, grads, routes = _dense_step(model, ids, pos)
    layers = len(model.model.layers)
    assert sorted(i for i, *_ in routed_calls) == list(range(layers))
    assert all(rows == T and grad_enabled for _, rows, grad_enabled in routed_calls)
    assert all(0 < r.float().mean() < 1 for r in routes)  # padding rows in every layer

    # The full backward: the count layout's backward calls the positional core, which here
    # attends for every token (the capacity layout's would bypass it).
    run.routed_rows = "count"
    reference_calls = []
    for layer in model.model.layers:
        layer.self_attn.global_attn.attention_core = _all_routed_core(reference_calls)
    ref_loss, ref_grads, _ = _dense_step(model, ids, pos)
    assert len(reference_calls) == 2 * layers
    assert grads.keys() == count_grads.keys() == ref_grads.keys()
    assert any("global_attn.q_proj" in n for n in grads) and any("router" in n for n in grads)
    for want_loss, want_grads in ((count_loss, count_grads), (ref_loss, ref_grads)):
        torch.testing.assert_close(loss, want_loss, atol=1e-5, rtol=1e-5)
        for name in grads:
            torch.testing.assert_close(grads[name], want_grads[name], atol=1e-5, rtol=1e-4, msg=name)
