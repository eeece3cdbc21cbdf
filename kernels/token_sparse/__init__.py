"""Token-sparse causal attention (the L2A global branch)."""

from .naive import token_sparse_attention_naive
from .op import token_sparse_attention

__all__ = ["token_sparse_attention", "token_sparse_attention_naive"]
