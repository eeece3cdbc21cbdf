"""Batches of left-padded prompts for the generation tests."""

from __future__ import annotations

import torch


def left_padded(*prompts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D prompts as one left-padded batch: (ids, attention_mask), padding id 0."""
    n = max(p.numel() for p in prompts)
    ids = torch.zeros(len(prompts), n, dtype=torch.long)
    mask = torch.zeros(len(prompts), n, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, n - p.numel() :], mask[row, n - p.numel() :] = p, 1
    return ids, mask
