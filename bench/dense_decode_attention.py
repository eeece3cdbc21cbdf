"""The dense base's decoding attention on a static cache through the same split-KV kernels
as the L2A models' (kernels/decode_split.py), so that bench.inference's ``graph`` mode
compares both models on one decoding kernel.

transformers' SDPA path on a ``StaticCache`` attends over all ``max_cache_len`` rows with a
boolean mask, and SDPA with a mask takes the memory-efficient kernel with one program per
(row, head) over the whole cache. ``use_split_decode(model)`` registers an attention
implementation that hands decoding calls (at most ``DECODE_MAX_QUERIES`` queries, a boolean
mask or none) to ``masked_decode_attention`` and everything else to SDPA, with SDPA's masks.
"""

from __future__ import annotations

import contextlib

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from kernels.decode import DECODE_MAX_QUERIES, masked_decode_attention

SPLIT_DECODE = "l2a_split_decode"


def split_decode_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                           backend: str = "auto", **kwargs):
    """transformers' attention-function signature: query ``(B, Hq, q, D)``, key / value
    ``(B, Hkv, kv, D)``, ``attention_mask`` SDPA's (bool ``(B or 1, 1, q, kv)``, or None:
    causal) -> ``((B, q, Hq, D), None)``."""
    B, _, tq, _ = query.shape
    tk = key.shape[2]
    if tq <= DECODE_MAX_QUERIES and dropout == 0.0 and not kwargs.get("output_attentions"):
        visible = None
        if attention_mask is None and tq == 1:
            visible = torch.ones(1, 1, tk, dtype=torch.bool, device=query.device)
        elif (attention_mask is not None and attention_mask.dtype == torch.bool
              and attention_mask.shape[1] == 1 and attention_mask.shape[-2:] == (tq, tk)):
            visible = attention_mask[:, 0]
        if visible is not None:
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            o = masked_decode_attention(query, key, value, visible, scale, None, backend)
            return o.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                  scaling=scaling, **kwargs)


def register(name: str = SPLIT_DECODE, fn=split_decode_attention) -> str:
    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


@contextlib.contextmanager
def use_split_decode(model, name: str = SPLIT_DECODE, fn=split_decode_attention):
    """``model`` (a transformers model on SDPA) decodes through the split kernels inside."""
    previous = model.config._attn_implementation
    model.set_attn_implementation(register(name, fn))
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
