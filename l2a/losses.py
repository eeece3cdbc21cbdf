"""Router statistics computed from what the model returned (no state in the model)."""

from __future__ import annotations

import torch


def _valid(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(like, dtype=torch.bool) if mask is None else mask.bool()


def router_regulariser(
    router_probs: tuple[torch.Tensor, ...], attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The method's R = (1/L) * sum over layers of mean over batch of sum over tokens of p_t^2.

    router_probs: one (B, T) tensor per L2A layer; attention_mask (B, T): False/0 at
    padding, which does not count. Returns a scalar (0 when there is no L2A layer)."""
    if not router_probs:
        return torch.zeros(())
    total = 0.0
    for p in router_probs:
        valid = _valid(attention_mask, p)
        total = total + (p.float().pow(2) * valid).sum(-1).mean()
    return total / len(router_probs)


@torch.no_grad()
def layer_sparsity(
    routes: tuple[torch.Tensor, ...], attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Fraction of (valid) tokens with d_t = 0, per L2A layer: a (L,) float tensor."""
    if not routes:
        return torch.zeros(0)
    out = []
    for d in routes:
        valid = _valid(attention_mask, d)
        n = valid.sum().clamp(min=1)
        out.append(((~d.bool()) & valid).sum().float() / n)
    return torch.stack(out)
