"""The outputs of the L2A models: the usual fields plus the routers' (own module so that
the decoding graphs and the model both import it without importing each other)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast


@dataclass
class L2AModelOutputWithPast(BaseModelOutputWithPast):
    """``router_probs`` / ``routes``: one (B, T) tensor per L2A layer, in layer order."""

    router_probs: tuple[torch.Tensor, ...] | None = None
    routes: tuple[torch.Tensor, ...] | None = None


@dataclass
class L2ACausalLMOutputWithPast(CausalLMOutputWithPast):
    router_probs: tuple[torch.Tensor, ...] | None = None
    routes: tuple[torch.Tensor, ...] | None = None
