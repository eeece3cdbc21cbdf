"""The global branch's o_proj fused with the gated residual add (l2a/gated_output.py):
the same values and gradients as autograd's `hidden + gate * o_proj(o)`, one
`tokens x hidden` tensor fewer kept for backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import l2a.gated_output as gated_output
from l2a.convert import convert_model
from l2a.fused import gated_add
from l2a.gated_output import GatedOutputProjection, GatedResidualLinear
from tests.l2a.grad_helpers import loss_outputs_grads


def _unfused(x, weight, bias, residual, gate):
    """The reference: autograd through the linear and the gated add."""
    return residual + gate.unsqueeze(-1).to(x.dtype) * F.linear(x, weight, bias)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk_rows", [4, 8192])  # several gate-gradient chunks, or one
def test_values_and_gradients_match_autograd(monkeypatch, with_bias, chunk_rows):
    monkeypatch.setattr(gated_output, "CHUNK_ROWS", chunk_rows)
    gen = torch.Generator().manual_seed(0)
    B, T, q, h = 2, 13, 12, 10  # q != h: a transposed weight would not even run
    x = torch.randn(B, T, q, generator=gen, dtype=torch.float64)
    x[0, :4] = 0.0  # unrouted rows of a sparse step: attention output exactly zero
    w = torch.randn(h, q, generator=gen, dtype=torch.float64)
    b = torch.randn(h, generator=gen, dtype=torch.float64) if with_bias else None
    res = torch.randn(B, T, h, generator=gen, dtype=torch.float64)
    # Arbitrary gate values (not only the 0/1 of the straight-through gate): the
    # gradient identity must not depend on them.
    gate = torch.rand(B, T, generator=gen, dtype=torch.float64)
    gate[1, :5] = 0.0  # dense-path step: unrouted tokens with a != 0 and a zero gate
    leaves = [t.clone().requires_grad_() for t in (x, w, res, gate)] + (
        [b.clone().requires_grad_()] if with_bias else [])
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]

    def run(fn, xs, ws, rs, gs, *bs):
        out = fn(xs, ws, bs[0] if bs else None, rs, gs)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape))
        return out

    out = run(GatedResidualLinear.apply, *leaves)
    ref = run(_unfused, *ref_leaves)
    assert torch.equal(out, ref)
    for got, want in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-12, atol=1e-12)


def _saved_bytes(fn) -> int:
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_keeps_one_hidden_wide_tensor_fewer():
    B, T, q, h = 1, 32, 24, 16
    proj = GatedOutputProjection(q, h, bias=False)
    x = torch.randn(B, T, q, requires_grad=True)
    res = torch.randn(B, T, h, requires_grad=True)
    p = torch.rand(B, T, requires_grad=True)
    d = p > 0.5
    gate = d.float() + p - p.detach()
    fused = _saved_bytes(lambda: proj(x, res, gate))
    plain = _saved_bytes(lambda: gated_add(res, proj(x), d, p))
    # The unfused pair keeps x (for the weight gradient) and a = o_proj(x) (for the gate's
    # gradient); the fused node keeps x and the gate, not a.
    assert plain - fused == B * T * h * 4


@pytest.mark.parametrize("dense", [False, True])
def test_model_gradients_match_the_unfused_layer(make_base, family, monkeypatch, dense):
    """Whole tiny L2A model (GQA, packed documents, odd length), a normal and a dense-path
    step: the same loss and the same gradient of every trainable parameter as with the
    unfused o_proj + gated add."""
    extra = {"attention_bias": True} if family == "qwen3" else {}  # an o_proj bias
    model = convert_model(make_base(family, **extra), init="paper", window=5).double().train()
    with torch.no_grad():  # routers that route part of the tokens
        gen = torch.Generator().manual_seed(3)
        for layer in model.model.layers:
            w = layer.self_attn.router.weight
            w.copy_(torch.randn(w.shape, generator=gen, dtype=w.dtype) * 0.3)
            bias = layer.self_attn.global_attn.o_proj.bias
            if bias is not None:  # HF initialises it to zero, which would hide its term
                bias.copy_(torch.randn(bias.shape, generator=gen, dtype=bias.dtype) * 0.1)
    ids = torch.randint(0, model.config.vocab_size, (2, 23), generator=torch.Generator().manual_seed(3))
    pos = torch.cat([torch.arange(9), torch.arange(14)]).expand(2, -1)  # two documents
    loss, out, grads = loss_outputs_grads(model, ids, pos, dense=dense)
    routed = torch.cat([d.flatten() for d in out.routes]).double().mean()
    assert 0.1 < routed < 0.9, routed  # both gate values occur

    def unfused_forward(self, x, residual=None, gate=None):
        a = F.linear(x, self.weight, self.bias)
        return a if residual is None else residual + gate.unsqueeze(-1).to(a.dtype) * a

    monkeypatch.setattr(GatedOutputProjection, "forward", unfused_forward)
    ref_loss, _, ref_grads = loss_outputs_grads(model, ids, pos, dense=dense)
    assert torch.equal(loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    assert any("router" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-10, atol=1e-12, msg=name)
