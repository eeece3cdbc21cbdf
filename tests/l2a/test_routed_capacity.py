"""`routed_rows="capacity"`: the routed path's compacted queries as every row (a device-side
permutation, routed rows first) instead of the routed count R, so that no layer reads R from
the device. The rows past a row's routed ones are padding: their attention output is zero
and the gated scatter-add zeroes them, so the loss, the router's outputs and every gradient
equal the count layout's and the full-width path's (fp32, CPU), with and without activation
checkpointing (whose recomputation has nothing to remember in this layout).
"""

from __future__ import annotations

import pytest
import torch
from grad_helpers import assert_same_run, loss_outputs_grads, mixed_router_model

from l2a.convert import convert_model

RTOL, ATOL = 1e-5, 1e-6


def _batch(vocab):
    """Three rows of 37 tokens (odd), packed documents of different lengths per row."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (3, 37), generator=g)
    pos = torch.stack([
        torch.cat([torch.arange(n) for n in (15, 1, 21)]),
        torch.cat([torch.arange(n) for n in (30, 7)]),
        torch.arange(37),
    ])
    return ids, pos


def _pin_routes(model, rows):
    """Each layer's decision per row: 'mixed' (the router's own), 'none' or 'all'."""
    for layer in model.model.layers:
        attn = layer.self_attn

        def route(g, fused=False, real=attn.route):
            p, d = real(g, fused)
            d = d.clone()
            for b, kind in enumerate(rows):
                if kind != "mixed":
                    d[b] = kind == "all"
            return p, d

        attn.route = route


def _run(model, ids, pos, path):
    run = model.l2a_runtime
    run.routed_projections = path != "full"
    run.routed_rows = "capacity" if path == "capacity" else "count"
    return loss_outputs_grads(model, ids, pos)


def _assert_same(a, b):
    assert_same_run(a, b, RTOL, ATOL)


@pytest.mark.parametrize("rows", [("mixed", "mixed", "mixed"), ("mixed", "none", "all")],
                         ids=["mixed", "none-all"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_capacity_equals_count_and_full_path(make_base, family, checkpointing, rows):
    model = mixed_router_model(make_base, family)  # GQA: the tiny bases have fewer KV heads than heads
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    _pin_routes(model, rows)
    ids, pos = _batch(model.config.vocab_size)
    runs = {path: _run(model, ids, pos, path) for path in ("full", "count", "capacity")}
    counts = [d.sum(1).tolist() for d in runs["capacity"][1].routes]
    for per_row in counts:
        assert len(set(per_row)) > 1, f"rows route the same count: {counts}"
        if rows[1] == "none":
            assert per_row[1] == 0 and per_row[2] == ids.shape[1]
    _assert_same(runs["full"], runs["capacity"])
    _assert_same(runs["count"], runs["capacity"])


def test_capacity_projects_every_row_and_reads_no_count(make_base, monkeypatch):
    """q_proj of the global branch sees T rows per batch row (not R), and the layer never
    asks for R (the equality test above would also pass with the switch doing nothing)."""
    import kernels.token_sparse.compact as compact

    model = mixed_router_model(make_base, "qwen3", layers=1)
    seen = []
    model.model.layers[0].self_attn.global_attn.q_proj.register_forward_hook(
        lambda m, i, o: seen.append(tuple(i[0].shape)))

    def refuse(*args, **kwargs):
        raise AssertionError("the routed count was read in the capacity layout")

    monkeypatch.setattr(compact, "routed_rows", refuse)
    ids, pos = _batch(model.config.vocab_size)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    out = _run(model, ids, pos, "capacity")[1]
    assert int(out.routes[0].sum(1).max()) < ids.shape[1]
    assert seen and all(s == (3, ids.shape[1], model.config.hidden_size) for s in seen)


def test_runtime_switch(make_base):
    model = convert_model(make_base("qwen3", layers=1), init="paper", window=6)
    assert model.l2a_runtime.routed_rows == "count"  # the measured layout until a GPU decides
    with pytest.raises(ValueError, match="routed_rows: must be one of"):
        model.l2a_runtime.routed_rows = "padded"
    model.l2a_runtime.routed_rows = "capacity"
    assert "l2a_routed_rows" not in model.config.to_dict()
