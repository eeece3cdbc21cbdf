"""Triton kernels shared by the token-sparse and sliding-window ops.

One kernel family computes causal attention for a *compacted* list of query positions
against all keys, with a per-query key range `[max(doc start, pos - window + 1), pos]`.
Token-sparse attention is that with the routed positions; sliding-window attention is that
with every position and a finite window.
"""
