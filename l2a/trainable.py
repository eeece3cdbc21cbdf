"""Which parameters L2A continued pretraining updates.

The method trains both attention branches, all norms and the router, and freezes MLPs,
embeddings and the LM head (the reference's ``self_attn,norm,sigmoid_linear``). In this
code base the router lives under ``self_attn``.
"""

from __future__ import annotations

from torch import nn

TRAINABLE_KEYS = ("self_attn.", "norm")


def trainable_parameter_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_parameters() if any(k in n for k in TRAINABLE_KEYS)]


def mark_trainable(model: nn.Module, everything: bool = False) -> tuple[int, int]:
    """Set requires_grad per the rule above (every parameter with `everything`: pretraining
    from scratch); returns (trainable, total) parameter counts."""
    keep = {n for n, _ in model.named_parameters()} if everything else set(trainable_parameter_names(model))
    trainable = total = 0
    for name, param in model.named_parameters():
        param.requires_grad_(name in keep)
        n = getattr(param, "ds_numel", param.numel())  # full size of a ZeRO-3 partitioned one
        total += n
        trainable += n if name in keep else 0
    return trainable, total
