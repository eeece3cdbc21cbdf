"""The global branch's output projection fused with its gated residual add, without keeping
the branch output for backward.

The layer computes ``hidden + gate * a`` with ``a = o_proj(o)`` and the straight-through
gate (forward ``d``, gradient of the router probability ``p``). Autograd's version keeps
``a`` (``tokens x hidden``, one stream copy per L2A layer: 2 GiB per GPU at 512K tokens with
sequence parallelism 2 for Qwen3-8B) only for the gate's gradient ``sum_j a_tj g_tj``.
That gradient can be had from what ``o_proj``'s backward keeps and computes anyway:
``a_t . g_t = o_t . (g_t W) + b . g_t``, and ``g W`` is the input gradient before the gate
(``(gate * g) W = gate * (g W)``, the gate being one scalar per token). So this function
keeps ``o`` (saved by the projection in any case), the weight and the gate, computes
``G = g W`` once, the gate's gradient from ``o . G`` and the input gradient as
``gate * G``: the same number of matmuls as the unfused pair, one stream copy less kept,
and exact for any gate values (dense-path steps included, where unrouted tokens have
``a != 0`` and a zero gate).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Rows whose gate gradient is summed in fp32 at once (two fp32 temporaries of
# ROWS x width: 256 MiB at 8K x 4096).
CHUNK_ROWS = 8192


class GatedResidualLinear(torch.autograd.Function):
    """``residual + gate[..., None] * (x @ weight.T + bias)``; saves x, weight, bias, gate."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, gate):
        a = F.linear(x, weight, bias)
        # The same operations as l2a.fused.gated_add (the same bits), in place: no
        # temporaries beside the result (this runs again in the recomputation of a
        # checkpointed layer, near the step's memory peak).
        gated = a.mul_(gate.unsqueeze(-1).to(a.dtype))
        out = gated.add_(residual) if residual.dtype == a.dtype else residual + gated
        ctx.save_for_backward(x, weight, bias, gate)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias, gate = ctx.saved_tensors
        need_x, need_w, need_b, need_res, need_gate = ctx.needs_input_grad
        g = grad.reshape(-1, grad.shape[-1])
        rows = x.reshape(-1, x.shape[-1])
        gate_col = gate.reshape(-1, 1).to(g.dtype)
        grad_w = grad_b = grad_x = grad_gate = None
        if need_w or need_b:
            gg = g * gate_col  # the gradient of a, as the unfused backward has it
            grad_w = gg.t().mm(rows) if need_w else None
            grad_b = gg.sum(0) if need_b else None
            del gg
        if need_x or need_gate:
            G = g.mm(weight.to(g.dtype))  # d/dx before the gate
            if need_gate:
                acc = torch.promote_types(G.dtype, torch.float32)  # fp32, or fp64 for fp64
                grad_gate = torch.empty(rows.shape[0], dtype=acc, device=g.device)
                for s in range(0, rows.shape[0], CHUNK_ROWS):
                    part = slice(s, s + CHUNK_ROWS)
                    grad_gate[part] = (rows[part].to(acc) * G[part].to(acc)).sum(-1)
                    if bias is not None:
                        grad_gate[part] += g[part].to(acc).mv(bias.to(acc))
                grad_gate = grad_gate.view(gate.shape).to(gate.dtype)
            grad_x = G.mul_(gate_col).view(x.shape) if need_x else None
        return grad_x, grad_w, grad_b, grad if need_res else None, grad_gate


class GatedOutputProjection(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) whose call with a residual and a
    gate returns ``residual + gate * linear(x)`` through ``GatedResidualLinear``. Called as
    a module, so that ZeRO-3 gathers the weight for it in the forward and the backward."""

    def forward(self, x, residual=None, gate=None):
        if residual is None:
            return super().forward(x)
        return GatedResidualLinear.apply(x, self.weight, self.bias, residual, gate)


def straight_through_gate(d: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Forward value ``d``, gradient of ``p`` (the method's straight-through estimator)."""
    return d.to(p.dtype) + p - p.detach()
