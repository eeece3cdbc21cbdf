"""GPU paths of the sliding-window op.

`triton`: the compacted-query kernels with every position routed and a finite window
(key blocks outside `[pos - window + 1, pos]` are never visited). `flex`: FlexAttention
with a block mask built from the window and document ids, never a dense T x T mask.
"""

from __future__ import annotations

import torch

from ..flash.host import routed_attention
from ..flash.routing import build_routing


def sliding_window_attention_triton(q, k, v, window: int, doc_ids, scale: float) -> torch.Tensor:
    B, _, T, _ = q.shape
    route = torch.ones(B, T, dtype=torch.bool, device=q.device)
    return routed_attention(q, k, v, build_routing(route, doc_ids, k.shape[2]), window, scale)


def sliding_window_attention_gpu(q, k, v, window: int, doc_ids, scale: float) -> torch.Tensor:
    return sliding_window_attention_triton(q, k, v, window, doc_ids, scale)
