"""Routed-only global projections: the same loss and gradients as the full-width path.

With `l2a_routed_projections` the global branch projects queries and output for routed
tokens only and scatter-adds the gated output into the residual stream. Unrouted rows of
the full path's attention output are zero, so nothing it computes for them reaches the
loss except o_proj's bias in the router's straight-through gradient: both paths must give
the same loss, router outputs and gradient of every parameter (fp32, CPU).
"""

from __future__ import annotations

import pytest
import torch
from grad_helpers import loss_outputs_grads

from l2a.convert import convert_model

RTOL, ATOL = 1e-5, 1e-6


def _model(make_base, family, layers=2, **kw):
    # Qwen3 with attention_bias: o_proj has a bias, the one place unrouted rows matter.
    extra = {"attention_bias": True} if family == "qwen3" else {}
    model = convert_model(make_base(family, layers=layers, **extra), init="paper", window=6, **kw)
    torch.manual_seed(3)
    with torch.no_grad():  # a mixed routing decision in every layer
        for layer in model.model.layers:
            layer.self_attn.router.weight.normal_(0, 0.3)
    return model.train()


def _packed_batch(vocab, seed=0):
    """Two rows of 37 tokens (odd), packed documents of different lengths per row."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, 37), generator=g)
    pos = torch.stack(
        [
            torch.cat([torch.arange(n) for n in (15, 1, 21)]),
            torch.cat([torch.arange(n) for n in (30, 7)]),
        ]
    )
    return ids, pos


def _run(model, ids, pos, routed, dense=False):
    model.l2a_runtime.routed_projections = routed
    return loss_outputs_grads(model, ids, pos, dense)


def _assert_same(a, b):
    loss_a, out_a, grads_a = a
    loss_b, out_b, grads_b = b
    torch.testing.assert_close(loss_a, loss_b, rtol=RTOL, atol=ATOL)
    for pa, pb, da, db in zip(out_a.router_probs, out_b.router_probs, out_a.routes, out_b.routes):
        torch.testing.assert_close(pa, pb, rtol=RTOL, atol=ATOL)
        assert torch.equal(da, db)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=RTOL, atol=ATOL, msg=name)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_same_loss_and_gradients(make_base, family, checkpointing):
    model = _model(make_base, family)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids, pos = _packed_batch(model.config.vocab_size)
    full = _run(model, ids, pos, routed=False)
    routed = _run(model, ids, pos, routed=True)
    counts = [int(d.sum()) for d in routed[1].routes]
    assert all(0 < c < ids.numel() for c in counts), f"routing not mixed: {counts}"
    _assert_same(full, routed)


def test_routed_path_projects_only_routed_rows(make_base, family):
    """q_proj and o_proj of the global branch see R = the largest routed count of a row
    rows per batch row; k_proj and v_proj every token. Guards the switch against doing
    nothing (the equality test above would pass then too)."""
    model = _model(make_base, family, layers=1)
    seen = {}
    attn = model.model.layers[0].self_attn.global_attn
    for name in ("q_proj", "k_proj", "v_proj"):
        getattr(attn, name).register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, tuple(i[0].shape))
        )
    ids, pos = _packed_batch(model.config.vocab_size)
    model.l2a_runtime.routed_projections = True
    with torch.no_grad():
        out = model(ids, position_ids=pos)
    R = int(out.routes[0].sum(dim=1).max())
    assert R < ids.shape[1]
    assert seen["q_proj"] == (2, R, model.config.hidden_size)
    assert seen["k_proj"] == seen["v_proj"] == (2, ids.shape[1], model.config.hidden_size)


def test_dense_path_step_computes_every_token(make_base, family):
    model = _model(make_base, family, layers=1)
    rows = []
    model.model.layers[0].self_attn.global_attn.q_proj.register_forward_hook(
        lambda m, i, o: rows.append(i[0].shape[1])
    )
    ids, pos = _packed_batch(model.config.vocab_size)
    full = _run(model, ids, pos, routed=False, dense=True)
    routed = _run(model, ids, pos, routed=True, dense=True)
    assert rows == [ids.shape[1], ids.shape[1]]
    _assert_same(full, routed)


def test_no_routed_token_and_all_routed(make_base):
    """Edge counts: R = 0 (the branch adds nothing; router gradient from the bias only)
    and R = T (every row routed, no padding)."""
    model = _model(make_base, "qwen3", layers=1)
    ids, pos = _packed_batch(model.config.vocab_size)
    block = model.model.layers[0].self_attn
    for threshold, want in ((float("inf"), 0), (float("-inf"), ids.numel())):
        block.logit_threshold = threshold
        full = _run(model, ids, pos, routed=False)
        routed = _run(model, ids, pos, routed=True)
        assert int(routed[1].routes[0].sum()) == want
        _assert_same(full, routed)


def test_runtime_switch(make_base):
    model = convert_model(make_base("qwen3", layers=1), init="paper", window=6)
    with pytest.raises(ValueError, match="routed_projections"):
        model.l2a_runtime.routed_projections = "yes"
    assert model.l2a_runtime.routed_projections is False  # opt-in until measured on a GPU


@pytest.mark.gpu
@pytest.mark.parametrize("rows, dense", [("count", False), ("capacity", False), ("capacity", True)],
                         ids=["count", "capacity", "capacity-dense-path"])
@pytest.mark.parametrize("family", ["qwen3", "qwen2"])
@pytest.mark.parametrize("backend", ["auto", "triton", "flex", "fa4"])
def test_gpu_bf16_same_as_full_path(make_base, family, backend, rows, dense):
    """bf16 on the GPU, every backend: routed-only projections against the full path of
    the same backend (the decisions are pinned: bf16 rounding differs between the paths
    and could flip a token sitting on the threshold), in both layouts of the routed rows
    (`l2a.routed_rows`); in the capacity layout also a dense-path step, whose token-sparse
    backward then runs through the routed core on every row."""
    from kernels.backends import fa4_suits

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    kw = dict(hidden_size=256, num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096)
    if family == "qwen3":
        kw.update(head_dim=64, attention_bias=True)
    model = convert_model(make_base(family, **kw), init="paper", window=64)
    model.l2a_runtime.attn_backend = backend
    model = model.to("cuda", torch.bfloat16).train()
    if backend == "fa4" and not fa4_suits(torch.zeros(1, 1, 1, 64, device="cuda", dtype=torch.bfloat16)):
        pytest.skip("flash-attn-4 not installed or not a Hopper/Blackwell GPU")
    lengths = [300, 1, 450, 249]
    ids = torch.randint(0, 301, (2, sum(lengths)), device="cuda")
    pos = torch.cat([torch.arange(n) for n in lengths]).to("cuda").expand(2, -1)
    gen = torch.Generator(device="cuda").manual_seed(2)
    for layer in model.model.layers:
        mask = torch.rand(ids.shape, device="cuda", generator=gen) < 0.2
        attn = layer.self_attn
        attn.route = lambda g, route=attn.route, mask=mask: (route(g)[0], mask)
    model.l2a_runtime.routed_rows = rows  # read by the routed path only
    runs = {flag: _run(model, ids, pos, routed=flag, dense=dense) for flag in (False, True)}
    (loss_f, _, grads_f), (loss_r, _, grads_r) = runs[False], runs[True]
    assert grads_f.keys() == grads_r.keys()
    assert abs(float(loss_f) - float(loss_r)) < 2e-2 * abs(float(loss_f))
    for name, g in grads_f.items():
        g, h = g.float(), grads_r[name].float()
        assert (h - g).norm() <= 3e-2 * g.norm() + 1e-4, name


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_explicit_backend_is_honoured(make_base, monkeypatch, backend):
    """An explicit attn_backend never reaches the FlexAttention / FlashAttention-4 paths,
    on either global-branch path (the Triton kernels run in the interpreter on CPU)."""
    import kernels.sliding_window.op as window_op
    import kernels.token_sparse.flex as flex

    def refuse(*args, **kwargs):
        raise AssertionError(f"backend={backend!r} reached a FlexAttention / FA4 path")

    monkeypatch.setattr(flex, "routed_query_attention_flex", refuse)
    monkeypatch.setattr(window_op, "resolve", lambda b, q: b if b == backend else refuse())
    model = _model(make_base, "qwen3", layers=1)
    model.l2a_runtime.attn_backend = backend
    ids, pos = _packed_batch(model.config.vocab_size)
    for routed in (False, True):
        _run(model, ids, pos, routed=routed)
