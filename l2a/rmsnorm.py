"""RMSNorm that keeps only its input for backward.

The transformers RMSNorm of Qwen2/Qwen3 (``weight * (x.float() * rsqrt(mean(x.float()^2) +
eps)).to(dtype)``) leaves autograd an fp32 copy of its input and the bf16 normalised tensor:
six bytes per element more than the input itself, i.e. 3 GiB per full-width norm and layer
at 128K tokens for Qwen3-8B (an L2A layer has three such norms and four head norms). This
one computes the same forward (the same fp32 operations in the same order) and saves the
input and the fp32 reciprocal RMS per row; the backward recomputes the normalised rows, one
chunk of rows at a time, so its fp32 temporaries stay small too.
"""

from __future__ import annotations

import torch
from torch import nn

# Elements of fp32 temporaries at once (forward and backward): 2^26 x 4 B = 256 MiB, i.e.
# 16K rows of 4096 or 512K rows of a 128-wide head norm (a few chunks per call at 128K
# tokens, so the chunking adds few kernel launches).
CHUNK_ELEMENTS = 2**26


def _normalise(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """HF's fp32 arithmetic: (x * rsqrt(mean(x^2) + eps), rsqrt(...)) in fp32."""
    x32 = x.float()
    rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return x32 * rstd, rstd


class _RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float, chunk_elements: int):
        rows = x.reshape(-1, x.shape[-1])
        chunk_rows = max(1, chunk_elements // rows.shape[1])
        ctx.chunk_rows = chunk_rows
        if rows.shape[0] <= chunk_rows:  # one chunk: no copies into preallocated buffers
            y, rstd = _normalise(rows, eps)
            ctx.save_for_backward(x, weight, rstd)
            return (weight * y.to(x.dtype)).view(x.shape)
        out_dtype = torch.promote_types(weight.dtype, x.dtype)
        out = torch.empty(rows.shape, dtype=out_dtype, device=x.device)
        rstd = torch.empty(rows.shape[0], 1, dtype=torch.float32, device=x.device)
        for s in range(0, rows.shape[0], chunk_rows):
            y, r = _normalise(rows[s : s + chunk_rows], eps)
            out[s : s + chunk_rows] = weight * y.to(x.dtype)
            rstd[s : s + chunk_rows] = r
        ctx.save_for_backward(x, weight, rstd)
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        rows = x.reshape(-1, x.shape[-1])
        go = grad_out.reshape(rows.shape)
        step = ctx.chunk_rows
        grad_x = torch.empty_like(rows) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        for s in range(0, rows.shape[0], step):
            r = rstd[s : s + step]
            y = rows[s : s + step].float() * r  # the normalised rows, recomputed
            g = go[s : s + step]
            if grad_w is not None:
                # out = weight * y.to(dtype): d/dweight sums g * y.to(dtype) over the rows.
                grad_w += (g * y.to(x.dtype)).float().sum(0)
            if grad_x is not None:
                gy = (g * weight).to(x.dtype).float()  # d/d(y.to(dtype)), back to fp32
                # y = x * r, r = (mean(x^2) + eps)^-1/2:  dx = r * (gy - y * mean(gy * y))
                grad_x[s : s + step] = (r * (gy - y * (gy * y).mean(-1, keepdim=True))).to(x.dtype)
        return (
            grad_x.view(x.shape) if grad_x is not None else None,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            None,
            None,
        )


class LeanRMSNorm(nn.Module):
    """Drop-in for ``Qwen2RMSNorm`` / ``Qwen3RMSNorm`` (same parameter, same forward values)
    that saves only its input and the per-row reciprocal RMS for backward."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and (hidden_states.requires_grad or self.weight.requires_grad)):
            y, _ = _normalise(hidden_states, self.variance_epsilon)
            return self.weight * y.to(hidden_states.dtype)
        return _RMSNormFunction.apply(hidden_states, self.weight, self.variance_epsilon,
                                      CHUNK_ELEMENTS)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"
