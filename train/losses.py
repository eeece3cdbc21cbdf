"""Causal-LM loss on the decoder's last hidden state without materialising the full logits.

At 128K tokens per sequence and a 152K vocabulary the full logits take 39 GB in bf16 (78 GB
in fp32), so the LM head and the cross-entropy are fused:

* on CUDA with ``liger_kernel`` installed: Liger's fused linear cross-entropy;
* otherwise a chunked PyTorch version: the valid target tokens are processed
  ``chunk_size`` rows at a time; each chunk's logits are computed with the head's matmul in
  the input dtype, the log-sum-exp and the softmax in fp32, and the chunk's gradients w.r.t.
  the hidden states and the head weight are produced right there (the loss is a scalar, so
  backward only scales them by the incoming gradient). Peak extra memory is one chunk of
  logits, ``chunk_size x V`` in fp32 (2.5 GB for 4096 x 152K), plus a gradient buffer of
  the size of ``hidden`` and, only when the head is trainable, one of the head weight in fp32.
  Tokens whose label is ignored cost nothing.

Gradient accumulation: a micro-batch's ``mean`` is over its own target tokens. To weight every
token of an optimizer step equally whatever the split into micro-batches and ranks, take
``reduction="sum"`` (or the mean times :func:`num_target_tokens`) and divide by the number of
target tokens of the whole step (summed over micro-batches and ranks).
"""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100
BACKENDS = ("auto", "torch", "liger")
REDUCTIONS = ("mean", "sum")


def shift_labels(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """HF convention: position ``t`` predicts ``labels[:, t + 1]``; the last position
    predicts nothing. Returns the per-position targets ``(B, T)``."""
    pad = labels.new_full((labels.shape[0], 1), ignore_index)
    return torch.cat([labels[:, 1:], pad], dim=1)


def num_target_tokens(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Number of tokens that :func:`causal_lm_loss` averages over: labels after the shift
    that are not ``ignore_index``. An int64 0-dim tensor on the labels' device."""
    return (labels[:, 1:] != ignore_index).sum()


def _liger_available() -> bool:
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError:
        return False
    return True


def _chunk_logits(h: Tensor, weight: Tensor) -> Tensor:
    # The head's matmul in the input dtype (as the model's own head would run), then fp32.
    return (h.to(weight.dtype) @ weight.t()).float()


def _chunked_forward(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    chunk_size: int,
    grad_scale: float | None,
    need_hidden_grad: bool,
    need_weight_grad: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Summed cross-entropy over the rows of ``hidden (N, d)`` whose ``targets (N,)`` are not
    ignored, and, if asked, the gradients of ``grad_scale * loss`` w.r.t. hidden and weight."""
    rows = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    grad_hidden = torch.zeros_like(hidden) if need_hidden_grad else None
    grad_weight = (
        torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        if need_weight_grad
        else None
    )
    want_grad = need_hidden_grad or need_weight_grad
    for start in range(0, rows.numel(), chunk_size):
        idx = rows[start : start + chunk_size]
        h = hidden.index_select(0, idx)
        tgt = targets.index_select(0, idx)
        logits = _chunk_logits(h, weight)  # (c, V) fp32: the only vocabulary-sized buffer
        lse = torch.logsumexp(logits, dim=-1)
        loss += (lse - logits.gather(1, tgt[:, None]).squeeze(1)).sum()
        if not want_grad:
            continue
        # d(loss)/d(logits) = softmax - onehot, computed in place in the fp32 buffer.
        grad_logits = logits.sub_(lse[:, None]).exp_()
        grad_logits[torch.arange(idx.numel(), device=idx.device), tgt] -= 1.0
        grad_logits = grad_logits.mul_(grad_scale).to(weight.dtype)
        if grad_hidden is not None:
            grad_hidden.index_copy_(0, idx, (grad_logits @ weight).to(hidden.dtype))
        if grad_weight is not None:
            grad_weight += (grad_logits.t() @ h.to(weight.dtype)).float()
    return loss, grad_hidden, grad_weight


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Loss of the chunked path, gradients computed in forward and scaled in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, grad_scale):
        loss, grad_hidden, grad_weight = _chunked_forward(
            hidden,
            weight,
            targets,
            chunk_size,
            grad_scale,
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
        )
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        return loss * grad_scale

    @staticmethod
    def backward(ctx, grad_out):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_out.float()
        if grad_hidden is not None:
            grad_hidden = grad_hidden * scale.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * scale).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None


def _liger_sum(hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    out = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")(
        weight, hidden, targets
    )
    # Newer Liger versions may return a tuple or an output object (with z-loss, accuracy).
    if isinstance(out, tuple):
        out = out[0]
    return getattr(out, "loss", out).float()


def causal_lm_loss(
    hidden: Tensor,
    lm_head_weight: Tensor,
    labels: Tensor,
    chunk_size: int = 4096,
    reduction: str = "mean",
    backend: str = "auto",
    return_num_tokens: bool = False,
    shifted: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Cross-entropy of ``hidden @ lm_head_weight.T`` against the shifted labels, in fp32.

    hidden: ``(B, T, d)`` last hidden state (after the final norm); lm_head_weight:
    ``(V, d)``; labels: ``(B, T)`` int, ``-100`` where ignored. Position ``t`` predicts
    ``labels[:, t + 1]`` (HF convention: pass the input ids, or the input ids with ``-100``
    on padding). chunk_size: target tokens per chunk of the PyTorch path. reduction:
    ``mean`` over target tokens (0, not NaN, when there is none) or ``sum``. backend:
    ``auto`` (Liger on CUDA when installed, else ``torch``), ``torch`` (chunked) or ``liger``.
    return_num_tokens: also return :func:`num_target_tokens` (see the module doc on
    gradient accumulation). shifted: ``labels`` are already the per-position targets
    (:func:`shift_labels` applied to the whole row before it was cut into slices, as under
    sequence parallelism); ``return_num_tokens`` then counts all of them. Equal to
    ``F.cross_entropy((hidden @ W.T).float()[:, :-1].flatten(0, 1), labels[:, 1:].flatten())``.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden: expected (batch, seq, d), got shape {tuple(hidden.shape)}")
    if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != hidden.shape[2]:
        raise ValueError(
            f"lm_head_weight: expected (vocab, {hidden.shape[2]}), "
            f"got shape {tuple(lm_head_weight.shape)}"
        )
    if labels.shape != hidden.shape[:2]:
        raise ValueError(
            f"labels: expected shape {tuple(hidden.shape[:2])} (batch, seq), "
            f"got {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels: expected an integer tensor, got {labels.dtype}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: must be an int >= 1, got {chunk_size!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend: must be one of {', '.join(BACKENDS)}, got {backend!r}")

    vocab = lm_head_weight.shape[0]
    targets = (labels if shifted else shift_labels(labels)).reshape(-1).to(torch.long)
    valid = targets != IGNORE_INDEX
    n = valid.sum()
    bad = valid & ((targets < 0) | (targets >= vocab))
    if bool(bad.any()):
        value = targets[bad][0].item()
        raise ValueError(f"labels: values must be in [0, {vocab}) or {IGNORE_INDEX}, found {value}")
    hidden2d = hidden.reshape(-1, hidden.shape[-1])

    use_liger = backend == "liger" or (backend == "auto" and hidden.is_cuda and _liger_available())
    if use_liger:
        if not (hidden.is_cuda and _liger_available()):
            raise ValueError("backend=liger: needs CUDA tensors and the liger_kernel package")
        total = _liger_sum(hidden2d, lm_head_weight, targets)
        loss = total if reduction == "sum" else total / n.clamp_min(1)
    else:
        # The mean's 1/n is folded into the gradients that forward computes.
        scale = 1.0 if reduction == "sum" else 1.0 / max(int(n), 1)
        grad_wanted = torch.is_grad_enabled() and (
            hidden.requires_grad or lm_head_weight.requires_grad
        )
        if grad_wanted:
            loss = _ChunkedLinearCrossEntropy.apply(
                hidden2d, lm_head_weight, targets, chunk_size, scale
            )
        else:
            loss = (
                _chunked_forward(
                    hidden2d, lm_head_weight, targets, chunk_size, scale, False, False
                )[0]
                * scale
            )
    return (loss, n) if return_num_tokens else loss
