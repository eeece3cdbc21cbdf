"""The router's logit ``g @ w`` in fp32 without an fp32 copy of the hidden stream kept for
backward.

``F.linear(g.float(), w.float())`` saves its input for the weight gradient: an fp32
``(B, T, hidden)`` copy of ``g`` per L2A layer (2 GiB per layer at 128K tokens for
Qwen3-8B), next to the bf16 ``g`` that the global branch's projections save anyway. This
function saves ``g`` itself (the same storage the projections keep) and upcasts one chunk
of rows at a time, in the forward and in the backward. The logit of each token is the same
fp32 dot product as before (each row is computed on its own), so the router decisions do not
move; the weight gradient is summed chunk by chunk in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Rows upcast at once: the transient fp32 copy is CHUNK_ROWS x hidden (256 MiB at 16K x 4096).
CHUNK_ROWS = 16384


class RouterLogit(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g: torch.Tensor, weight: torch.Tensor, chunk_rows: int) -> torch.Tensor:
        rows = g.reshape(-1, g.shape[-1])
        w = weight.float()  # (1, hidden): the router has one output
        logit = torch.empty(rows.shape[0], dtype=torch.float32, device=g.device)
        for s in range(0, rows.shape[0], chunk_rows):
            logit[s : s + chunk_rows] = F.linear(rows[s : s + chunk_rows].float(), w).squeeze(-1)
        ctx.save_for_backward(g, weight)
        ctx.chunk_rows = chunk_rows
        return logit.view(g.shape[:-1])

    @staticmethod
    def backward(ctx, grad_logit: torch.Tensor):
        g, weight = ctx.saved_tensors
        grad_g = grad_w = None
        gl = grad_logit.reshape(-1).float()
        rows = g.reshape(-1, g.shape[-1])
        w = weight.float().reshape(1, -1)
        n, step = rows.shape[0], ctx.chunk_rows
        if ctx.needs_input_grad[0]:
            # d logit_t / d g_t = w: one product per element, as exact as the fp32 linear's.
            grad_g = torch.empty_like(rows)
            for s in range(0, n, step):
                grad_g[s : s + step] = (gl[s : s + step, None] * w).to(g.dtype)
            grad_g = grad_g.view(g.shape)
        if ctx.needs_input_grad[1]:
            acc = torch.zeros(rows.shape[1], dtype=torch.float32, device=g.device)
            for s in range(0, n, step):
                acc += gl[s : s + step] @ rows[s : s + step].float()
            grad_w = acc.view(weight.shape).to(weight.dtype)
        return grad_g, grad_w, None


def router_logit(g: torch.Tensor, weight: torch.Tensor, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """fp32 logits ``(...)`` of ``g (..., hidden)`` against the router weight ``(1, hidden)``."""
    return RouterLogit.apply(g, weight, chunk_rows)
