"""Router statistics of L2A models, collected from what the model returns (`routes`: one
(B, T) bool tensor per L2A layer, True = the token used the global branch)."""

from __future__ import annotations

import torch

from eval.load import is_l2a


class PrefillRoutes:
    """Records the per-layer sparsity of each prefill (a forward of more than one token)
    of an L2A model's decoder stack, e.g. inside `model.generate`; decoding steps are left
    out. Use as a context manager; `.take()` returns and clears the last record."""

    def __init__(self, model, enabled: bool = True):
        self.model = model
        self.enabled = enabled and is_l2a(model)
        self._handle = None
        self._last: list[float] | None = None

    def _hook(self, _module, _args, output):
        routes = getattr(output, "routes", None)
        if routes and routes[0].shape[-1] > 1:
            self._last = [float((~d.bool()).float().mean()) for d in routes]

    def __enter__(self):
        if self.enabled:
            self._handle = self.model.model.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        if self._handle is not None:
            self._handle.remove()

    def take(self) -> list[float] | None:
        last, self._last = self._last, None
        return last


def bucket_sparsity(routes, bucket: torch.Tensor, valid: torch.Tensor, buckets: int):
    """Per layer and position bucket: (skipped counts (L, buckets), token counts (buckets,)).
    `bucket` (B, T) long, `valid` (B, T) bool."""
    b = bucket[valid]
    tokens = torch.bincount(b, minlength=buckets).double().cpu()
    skipped = torch.stack([torch.bincount(b, weights=(~d.bool())[valid].double(), minlength=buckets)
                           for d in routes]).cpu()
    return skipped, tokens


def routed_layers(config) -> list[int]:
    """Decoder-layer index of each entry of `routes`: the layers with a router and a global
    branch (all L2A layers, or those `l2a.prune` kept)."""
    has = getattr(config, "has_global_branch", None) or config.is_l2a_layer
    return [i for i in range(config.num_hidden_layers) if has(i)]


def dead_layers(layer_sparsity: list[float], layers: list[int], threshold: float = 0.99) -> list[int]:
    """Decoder layers whose global branch (almost) never runs: pruning candidates."""
    return [layer for layer, s in zip(layers, layer_sparsity) if s >= threshold]
