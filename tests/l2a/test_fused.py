"""Fused elementwise work (l2a/fused.py): the same loss, router outputs and gradients as
the module path, eagerly (the wiring) and compiled by Inductor (the kernels), also under
activation checkpointing, where the recomputation must reproduce the router decisions."""

from __future__ import annotations

import pytest
import torch
from grad_helpers import assert_same_run, loss_outputs_grads, mixed_router_model

import l2a.layers
from l2a.convert import convert_model

RTOL, ATOL = 2e-5, 1e-6


def _model(make_base, family, layers=2):
    return mixed_router_model(make_base, family, layers)


def _batch(vocab):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, 37), generator=g)
    pos = torch.cat([torch.arange(15), torch.arange(22)]).expand(2, -1)
    return ids, pos


def _run(model, ids, pos, fused, routed=True, dense=False):
    model.l2a_runtime.fused_elementwise = fused
    model.l2a_runtime.routed_projections = routed
    return loss_outputs_grads(model, ids, pos, dense)


def _assert_same(a, b):
    assert_same_run(a, b, RTOL, ATOL)


@pytest.mark.parametrize("routed", [True, False], ids=["routed", "full"])
@pytest.mark.parametrize("dense", [False, True], ids=["sparse", "dense_path"])
def test_fused_functions_match_module_path(make_base, family, monkeypatch, routed, dense):
    """The fused path's functions run eagerly (compile replaced by the identity): the
    wiring and the reference math, both families, both global-branch paths."""
    monkeypatch.setattr(l2a.layers, "compiled", lambda fn: fn)
    model = _model(make_base, family)
    ids, pos = _batch(model.config.vocab_size)
    _assert_same(
        _run(model, ids, pos, fused=False, routed=routed, dense=dense),
        _run(model, ids, pos, fused=True, routed=routed, dense=dense),
    )


def test_fused_compiled_under_checkpointing(make_base):
    """Inductor-compiled regions (dynamic shapes, fullgraph), with activation
    checkpointing: forward, recomputation and backward through the compiled kernels."""
    model = _model(make_base, "qwen3")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids, pos = _batch(model.config.vocab_size)
    _assert_same(_run(model, ids, pos, fused=False), _run(model, ids, pos, fused=True))


@pytest.mark.parametrize("fused", [False, True])
def test_router_from_first_principles(make_base, monkeypatch, fused):
    """p = sigmoid(w . g / tau), d = (p >= threshold), written out here by hand."""
    monkeypatch.setattr(l2a.layers, "compiled", lambda fn: fn)
    block = _model(make_base, "qwen3", layers=1).model.layers[0].self_attn
    g = torch.randn(2, 9, block.router.weight.shape[1], dtype=torch.float64)
    w = block.router.weight.detach().double()[0]
    tau, threshold = block.tau, 0.5
    p, d = block.route(g.float(), fused=fused)
    want = 1.0 / (1.0 + torch.exp(-(g @ w) / tau))
    torch.testing.assert_close(p.double(), want, rtol=1e-5, atol=1e-6)
    assert torch.equal(d, want >= threshold)


def test_runtime_switch():
    from l2a import L2ARuntime

    with pytest.raises(ValueError, match="fused_elementwise"):
        L2ARuntime().fused_elementwise = 1
    assert L2ARuntime().fused_elementwise is False


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["qwen3", "qwen2"])
def test_gpu_bf16_fused_matches_module_path(make_base, family):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    kw = dict(hidden_size=256, num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096)
    if family == "qwen3":
        kw.update(head_dim=64, attention_bias=True)
    model = convert_model(make_base(family, **kw), init="paper", window=64).to("cuda", torch.bfloat16)
    model.train().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lengths = [300, 1, 450, 249]
    ids = torch.randint(0, 301, (2, sum(lengths)), device="cuda")
    pos = torch.cat([torch.arange(n) for n in lengths]).to("cuda").expand(2, -1)
    gen = torch.Generator(device="cuda").manual_seed(2)
    for layer in model.model.layers:  # pinned decisions: bf16 rounding differs by path
        mask = torch.rand(ids.shape, device="cuda", generator=gen) < 0.2
        attn = layer.self_attn
        attn.route = lambda g, fused=False, route=attn.route, mask=mask: (route(g, fused)[0], mask)
    ref = _run(model, ids, pos, fused=False)
    got = _run(model, ids, pos, fused=True)
    assert abs(float(ref[0]) - float(got[0])) < 2e-2 * abs(float(ref[0]))
    for name, g in ref[2].items():
        g, h = g.float(), got[2][name].float()
        assert (h - g).norm() <= 3e-2 * g.norm() + 1e-4, name
