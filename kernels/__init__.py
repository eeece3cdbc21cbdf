"""Attention ops of the L2A layers: token-sparse global branch and sliding-window local branch.

Tensors are `(batch, heads, seq, head_dim)`; GQA needs `Hq % Hkv == 0` and never expands
K/V. Each op has a pure-PyTorch `*_naive` version (the CPU path and the kernels' reference).

This package must import neither transformers nor define `__version__`: transformers probes
for a hub package named `kernels` and may import this one instead.
"""

from .sliding_window import sliding_window_attention, sliding_window_attention_naive
from .token_sparse import token_sparse_attention, token_sparse_attention_naive
from .utils import doc_ids_from_position_ids

__all__ = [
    "doc_ids_from_position_ids",
    "sliding_window_attention",
    "sliding_window_attention_naive",
    "token_sparse_attention",
    "token_sparse_attention_naive",
]
