"""Token-sparse attention through the compacted-query Triton kernels."""

from __future__ import annotations

import torch

from ..flash.host import routed_attention
from ..flash.routing import build_routing


def token_sparse_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    route: torch.Tensor,
    doc_ids: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Routing compaction and the kernels run on q's device with no host synchronisation:
    grids are sized by the sequence length and programs past the routed count only write
    the zero rows."""
    return routed_attention(q, k, v, build_routing(route, doc_ids, k.shape[2]), None, scale)
