"""The KV cache of an L2A model: a window of keys for the local branch, every key for the
global branch, nothing global for pruned (local-only) layers.

Built on transformers' ``Cache`` / cache-layer classes, so ``generate``, beam search
(``reorder_cache``) and ``past_key_values`` work as with any HF model. Per decoder layer:

- L2A layer: a local slot that keeps the last ``window - 1`` keys and values (what the next
  query needs: query ``i`` sees keys ``i - window + 1 .. i``, transformers' sliding-window
  convention), and a global slot that keeps all of them (routed queries attend to every
  key, so unrouted tokens' keys are cached as well).
- pruned L2A layer (``l2a_global_layers``): the local slot only.
- layer outside ``l2a_layers`` (base attention): one full slot.

Bytes per cached token and layer: ``2 * Hkv * head_dim * itemsize`` per full slot, the same
for a local slot but only for ``window - 1`` tokens.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer


def cache_slots(config) -> list[tuple[int, int | None]]:
    """Per decoder layer ``(first slot, global slot or None)``; the first slot is the local
    branch of an L2A layer or the full attention of a base layer."""
    slots, n = [], 0
    for i in range(config.num_hidden_layers):
        if config.has_global_branch(i):
            slots.append((n, n + 1))
            n += 2
        else:
            slots.append((n, None))
            n += 1
    return slots


class GrowingLayer(DynamicLayer):
    """A full cache layer whose buffer grows by a margin instead of by ``torch.cat`` at every
    step (a concatenation copies the whole cache once per generated token: 18 GiB per token
    for Qwen3-8B at 128K). ``keys`` / ``values`` are views of the first ``length`` rows.

    The first update allocates exactly the prompt; later growth reserves 1/64 more + 256
    tokens, so the buffer exceeds the content by at most that margin."""

    def lazy_initialization(self, key_states, value_states) -> None:
        super().lazy_initialization(key_states, value_states)
        self._k = self._v = None

    def _adopt(self) -> None:
        """After a base-class method replaced keys/values: they become the buffer."""
        self._k, self._v = self.keys, self.values

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, add = self.get_seq_length(), key_states.shape[-2]
        if self._k is None or self._k.shape[-2] < n + add:
            cap = n + add if n == 0 else n + add + 256 + (n + add) // 64
            shape = (*key_states.shape[:-2], cap, key_states.shape[-1])
            k = key_states.new_empty(shape)
            v = value_states.new_empty((*value_states.shape[:-2], cap, value_states.shape[-1]))
            if n:
                k[..., :n, :] = self.keys
                v[..., :n, :] = self.values
            self._k, self._v = k, v
        self._k[..., n : n + add, :] = key_states
        self._v[..., n : n + add, :] = value_states
        self.keys, self.values = self._k[..., : n + add, :], self._v[..., : n + add, :]
        return self.keys, self.values

    def allocated_bytes(self) -> int:
        if not self.is_initialized or self._k is None:
            return 0
        return storage_bytes(self._k, self._v)

    def reorder_cache(self, beam_idx) -> None:
        super().reorder_cache(beam_idx)
        self._adopt()

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        self._k, self._v = self.keys.clone(), self.values.clone()
        self.keys, self.values = self._k, self._v

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._adopt()

    def batch_select_indices(self, indices) -> None:
        super().batch_select_indices(indices)
        self._adopt()

    def offload(self):
        super().offload()
        self._adopt()

    def prefetch(self):
        super().prefetch()
        self._adopt()


class LocalWindowLayer(DynamicSlidingWindowLayer):
    """Keeps the last ``window - 1`` keys and values and returns them with the new ones.

    Unlike transformers' layer it copies the kept rows out of a long update (a prefill):
    a view would keep the whole prompt's keys alive until the next step. ``window == 1``
    keeps nothing (transformers' slice ``[-0:]`` would keep everything)."""

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.cumulative_length += key_states.shape[-2]
        if self.keys.numel() == 0:  # the first update (a prefill): nothing to prepend
            keys, values = key_states, value_states
        else:
            keys = torch.cat([self.keys, key_states], dim=-2)
            values = torch.cat([self.values, value_states], dim=-2)
        keep = self.sliding_window - 1
        n = keys.shape[-2]
        if n <= keep:
            self.keys, self.values = keys, values
        elif n <= 2 * keep:
            self.keys, self.values = keys[..., n - keep :, :], values[..., n - keep :, :]
        else:
            self.keys = keys[..., n - keep :, :].clone()
            self.values = values[..., n - keep :, :].clone()
        return keys, values

    def allocated_bytes(self) -> int:
        return storage_bytes(self.keys, self.values) if self.is_initialized else 0


def storage_bytes(*tensors) -> int:
    """Bytes of the memory blocks behind the tensors (a view keeps its whole block alive)."""
    return sum(t.untyped_storage().nbytes() for t in tensors)


def layer_bytes(layer) -> int:
    """Bytes of the keys and values a cache layer holds (its content, not its buffer)."""
    if not getattr(layer, "is_initialized", False) or layer.keys is None:
        return 0
    return sum(t.numel() * t.element_size() for t in (layer.keys, layer.values))


class L2ACache(Cache):
    """The cache of an L2A model (layout in the module docstring); ``L2ACache(config)``."""

    def __init__(self, config):
        layers = []
        for i, (_, global_slot) in enumerate(cache_slots(config)):
            if config.is_l2a_layer(i):
                layers.append(LocalWindowLayer(sliding_window=config.l2a_window))
                if global_slot is not None:
                    layers.append(GrowingLayer())
            else:
                layers.append(GrowingLayer())
        super().__init__(layers=layers)

    def kv_bytes(self) -> int:
        """Bytes of the cached keys and values (content)."""
        return sum(layer_bytes(layer) for layer in self.layers)

    def allocated_bytes(self) -> int:
        """Bytes of the buffers holding them (content plus the growth margin)."""
        return sum(layer.allocated_bytes() for layer in self.layers)


class DenseCache(Cache):
    """A base (dense) model's cache from the same growing layers, for like-for-like
    comparisons (benchmarks): one full slot per layer."""

    def __init__(self, num_layers: int):
        super().__init__(layers=[GrowingLayer() for _ in range(num_layers)])

    kv_bytes = L2ACache.kv_bytes
    allocated_bytes = L2ACache.allocated_bytes


def kv_cache_bytes(config, context: int, itemsize: int = 2) -> int:
    """Bytes an L2A cache holds for one sequence of ``context`` tokens, from the config:
    full slots hold ``context`` tokens, local slots ``min(context, window - 1)``."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_key_value_heads * head_dim * itemsize
    total = 0
    for i, (_, global_slot) in enumerate(cache_slots(config)):
        if config.is_l2a_layer(i):
            total += min(context, config.l2a_window - 1) * per_token
            if global_slot is not None:
                total += context * per_token
        else:
            total += context * per_token
    return total
