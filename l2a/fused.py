"""The elementwise work around the L2A branches, as fusable functions.

Residual add + RMSNorm_global, the router (fp32 logit, sigmoid, threshold), QK-norm +
RoPE, and the gated residual add of the global branch. Each function here is the plain
PyTorch reference; `compiled(fn)` is the same function under `torch.compile` (Inductor
writes a few Triton kernels for its forward and for its backward instead of one per
operation; what it saves for backward is its min-cut choice, typically the inputs). The
layer uses the compiled versions when `l2a_fused_elementwise` is on (same math, so the
results agree with the module path up to rounding), the module path (LeanRMSNorm,
router_logit: chunked, input-only saves) otherwise. Whether it is faster is for the
`l2a_fused` variant of bench.train_throughput to show; nothing here claims it.

Shapes change with the routed count every step and with the prompt length: compiled with
dynamic shapes and without duck sizing, so that one graph serves every count and length
(tests/l2a/test_fused_recompiles.py). Under activation checkpointing the recomputation runs the
same compiled kernels on the same inputs, so router decisions are reproduced exactly.
"""

from __future__ import annotations

import functools

import torch
import torch.fx.experimental._config  # noqa: F401  (use_duck_shape)
import torch.nn.functional as F

from .gated_output import straight_through_gate


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen2/Qwen3 RMSNorm: normalised in fp32, cast back, then scaled."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def add_rms_norm(hidden, delta, weight, eps: float):
    """`hidden + delta` and RMSNorm of the sum: the global branch's prologue."""
    hidden = hidden + delta
    return hidden, _rms_norm(hidden, weight, eps)


def router(g, weight, tau: float, threshold: float):
    """Router probabilities `p` and decisions `d` from the normed stream (fp32 logit)."""
    logit = F.linear(g.float(), weight.float()).squeeze(-1)
    return torch.sigmoid(logit / tau), logit >= threshold


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def norm_rope(x, weight, eps: float, cos, sin):
    """`x (B, n, H, D)` -> per-head RMSNorm (if `weight` is given) and RoPE with `cos`,
    `sin (B, n, D)`, returned as `(B, H, n, D)`."""
    if weight is not None:
        x = _rms_norm(x, weight, eps)
    x = x.transpose(1, 2)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin


def gated_add(hidden, a, d, p):
    """`hidden + gate * a` with the straight-through gate (forward d, gradient of p)."""
    gate = straight_through_gate(d, p)
    return hidden + gate.unsqueeze(-1).to(a.dtype) * a


def gated_scatter_add(hidden, a_rows, d, p, slots, valid, bias):
    """`gated_add` with the branch output given for the rows `slots` only (`valid` marks
    routed rows) and o_proj's bias, if any, for every token."""
    gate = straight_through_gate(d, p)
    gate_rows = gate.gather(1, slots) * valid
    idx = slots.unsqueeze(-1).expand_as(a_rows)
    hidden = hidden.scatter_add(1, idx, gate_rows.unsqueeze(-1).to(a_rows.dtype) * a_rows)
    if bias is not None:
        hidden = hidden + gate.unsqueeze(-1).to(bias.dtype) * bias
    return hidden


@functools.cache
def compiled(fn):
    """`fn` under torch.compile: dynamic shapes (one graph for every routed count and
    every length), no graph breaks, no duck sizing (see `_compile_without_duck_sizing`)."""
    return _compile_without_duck_sizing(torch.compile(fn, dynamic=True, fullgraph=True))


def _compile_without_duck_sizing(compiled_fn):
    """Dynamo's duck sizing gives two dimensions that have the same size at the first call
    one symbol; the hidden size comes from a parameter (static), so a prompt of exactly
    ``hidden_size`` tokens (4096 for Qwen3-8B) pinned the token dimension to that
    constant and the next length recompiled (seconds of Inductor inside a timed prefill).
    Without duck sizing every token dimension gets a symbol of its own. The setting is
    read when a frame is traced, so it is scoped to these calls (set and restored by hand:
    ``config.patch`` costs ~10x more, and these run a few hundred times per forward)."""
    config = torch.fx.experimental._config

    @functools.wraps(compiled_fn)
    def call(*args):
        duck = config.use_duck_shape
        config.use_duck_shape = False
        try:
            return compiled_fn(*args)
        finally:
            config.use_duck_shape = duck

    return call
