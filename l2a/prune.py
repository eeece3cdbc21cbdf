"""Prune global branches: measure how often each layer routes tokens to global attention,
and turn the least-used layers into local-only layers (no router, no global projections, no
global KV cache).

The library part: usage on given batches (`measure_global_usage`), the selection rules
(`select_global_layers`), pruning in place (`prune_global_branches`) and the report with the
KV cache bytes before and after (`prune_report`). The command with its calibration data
(prepared data, a text file, generated haystacks) is `python -m train.prune`, one layer up,
because it reads the data pipeline.
"""

from __future__ import annotations

import torch

from .cache import cache_slots, kv_cache_bytes
from .configuration import _validate_l2a_fields


class PruneError(ValueError):
    """Bad input of the pruning tool (argument, model or data); one line."""


def global_layers(config) -> list[int]:
    return [i for i in range(config.num_hidden_layers) if config.has_global_branch(i)]


@torch.no_grad()
def measure_global_usage(model, batches) -> dict[int, float]:
    """Fraction of tokens each layer routes to its global branch.

    ``batches``: dicts with ``input_ids`` and optionally ``position_ids`` (packed documents)
    and ``token_mask`` (bool, the tokens to count; default all)."""
    layers = global_layers(model.config)
    routed = torch.zeros(len(layers), dtype=torch.float64)
    counted = 0
    device = next(model.parameters()).device
    for batch in batches:
        ids = batch["input_ids"].to(device)
        pos = batch.get("position_ids")
        out = model(ids, position_ids=None if pos is None else pos.to(device), use_cache=False)
        mask = batch.get("token_mask")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.to(device).bool()
        for j, d in enumerate(out.routes):
            routed[j] += float((d & mask).sum())
        counted += int(mask.sum())
    if counted == 0:
        raise PruneError("calibration data: no tokens to measure on")
    return {layer: float(r) / counted for layer, r in zip(layers, routed.tolist())}


def select_global_layers(
    usage: dict[int, float] | None,
    candidates: list[int],
    threshold: float | None = None,
    keep: int | None = None,
    keep_fraction: float | None = None,
    keep_layers: list[int] | None = None,
) -> list[int]:
    """The layers that keep their global branch (sorted); exactly one selector is given."""
    chosen = [x is not None for x in (threshold, keep, keep_fraction, keep_layers)]
    if sum(chosen) != 1:
        raise PruneError("give exactly one of --threshold, --keep, --keep-fraction, --keep-layers")
    n = len(candidates)
    if keep_layers is not None:
        bad = sorted(set(keep_layers) - set(candidates))
        if bad:
            raise PruneError(
                f"--keep-layers: {bad} are not layers with a global branch (these are: {candidates})"
            )
        return sorted(set(keep_layers))
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise PruneError(f"--threshold: must be in [0, 1], got {threshold}")
    if keep is not None and not 0 <= keep <= n:
        raise PruneError(f"--keep: must be in [0, {n}] (layers with a global branch), got {keep}")
    if keep_fraction is not None and not 0.0 <= keep_fraction <= 1.0:
        raise PruneError(f"--keep-fraction: must be in [0, 1], got {keep_fraction}")
    if usage is None:
        raise PruneError("--threshold / --keep / --keep-fraction need calibration data")
    if threshold is not None:
        return [i for i in candidates if usage[i] >= threshold]
    if keep_fraction is not None:
        keep = round(keep_fraction * n)
    # Most used first; ties keep the earlier layer.
    ranked = sorted(candidates, key=lambda i: (-usage[i], i))
    return sorted(ranked[:keep])


def prune_global_branches(model, keep: list[int]):
    """Make every L2A layer not in ``keep`` local-only, in place; returns the model."""
    config = model.config
    candidates = global_layers(config)
    bad = sorted(set(keep) - set(candidates))
    if bad:
        raise PruneError(f"layers {bad} have no global branch to keep (these are: {candidates})")
    config.l2a_global_layers = sorted(set(keep))
    _validate_l2a_fields(config)
    slots = cache_slots(config)
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        if i in candidates and i not in keep:
            del attn.global_attn, attn.router, attn.global_norm
            attn.has_global = False
        if layer.is_l2a:
            attn.local_slot, attn.global_slot = slots[i]
        else:
            layer.cache_slot = slots[i][0]
    return model


def prune_report(model, keep: list[int], context: int, usage: dict[int, float] | None,
                 calibration: dict) -> dict:
    """Prune `model` in place to `keep` and describe it: the usage per candidate layer, the
    layers kept and pruned, and the KV cache bytes at `context` tokens before and after
    (`prune_report.json`)."""
    config = model.config
    candidates = global_layers(config)
    itemsize = next(model.parameters()).element_size()
    before = kv_cache_bytes(config, context, itemsize)
    prune_global_branches(model, keep)
    after = kv_cache_bytes(config, context, itemsize)
    return {
        "calibration": calibration,
        "usage": {str(i): usage[i] for i in candidates} if usage is not None else None,
        "kept_global_layers": keep,
        "pruned_layers": [i for i in candidates if i not in keep],
        "kv_bytes": {
            "context": context,
            "itemsize": itemsize,
            "before": before,
            "after": after,
            "ratio": after / before,
        },
    }
