"""Causal sliding-window attention with document masking (the L2A local branch)."""

from .naive import sliding_window_attention_naive
from .op import sliding_window_attention

__all__ = ["sliding_window_attention", "sliding_window_attention_naive"]
