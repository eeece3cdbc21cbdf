"""Benchmark-only: make every L2A layer route exactly a target fraction from the first step.

With random weights the router starts near 50% routed and the target controller needs tens
of steps to reach `l2a.sparsity_target`; a benchmark of a few steps at long context would time
steps at the wrong sparsity. `pin_routed_fraction(model, target)` replaces each global
layer's hard decision `d` by the top `routed_count(T, target)` tokens per row by the fp32
router logit, and keeps the soft `p` (and its gradient path) as the layer computes it.

Top-k on the logit rather than a calibrated per-layer threshold: the fused path passes the
threshold as a float into a torch.compile region, and one threshold per layer would compile
once per layer. Applied from outside (an instance attribute `route`): the layer is unchanged.
"""

from __future__ import annotations

import types

import torch
from torch import nn


def routed_count(tokens: int, target: float) -> int:
    """Tokens routed per row of `tokens` at sparsity `target` (the unrouted fraction)."""
    return round((1.0 - target) * tokens)


def pinned_decision(logit: torch.Tensor, target: float) -> torch.Tensor:
    """Boolean `(..., T)`: per row the `routed_count(T, target)` tokens of largest logit.

    Deterministic: `topk` on the same input picks the same indices (ties included), so the
    recomputation of activation checkpointing, which calls `route` again on the same `g`,
    gets the same `d` as the forward."""
    k = routed_count(logit.shape[-1], target)
    top = logit.topk(k, dim=-1).indices
    return torch.zeros(logit.shape, dtype=torch.bool, device=logit.device).scatter_(-1, top, True)


def pin_routed_fraction(model: nn.Module, target: float) -> int:
    """Wrap the `route` of every L2A layer with a global branch in `model` (a bare model, a
    wrapper around it or a DeepSpeed engine: found through `.modules()`); returns how many.

    Each row is ranked on its own: with sequence parallelism a rank routes the top fraction
    of its own slice (per-rank top-k; the routed count of the whole row is the same up to
    rounding). Padding is not masked out: the benchmark's synthetic rows have none. Steps
    on the stochastic dense path are untouched (the layer runs every token after `route`)."""
    from l2a.layers import L2AAttention
    from l2a.router_logit import router_logit

    wrapped = 0
    for m in model.modules():
        if not (isinstance(m, L2AAttention) and m.has_global):
            continue
        original = m.route  # the class's bound method

        def route(self, g, fused=False, _original=original):
            p, _ = _original(g, fused=fused)  # p as the layer computes it: same gradient path
            with torch.no_grad():
                d = pinned_decision(router_logit(g, self.router.weight), target)
            return p, d

        m.route = types.MethodType(route, m)
        wrapped += 1
    return wrapped
