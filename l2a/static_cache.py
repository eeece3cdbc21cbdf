"""A preallocated (static) L2A cache: fixed buffers, so a decoding step has fixed shapes and
CUDA graphs can capture it (l2a/decode_graph.py).

Layout per decoder layer (the slots of ``l2a.cache.cache_slots``), following transformers'
static caches (``StaticLayer``: buffers of ``max_cache_len`` rows, ``index_copy_`` writes):

- local branch of an L2A layer: a ring of ``window`` rows. Token ``c`` (its cache index,
  0, 1, ... in the order tokens were fed) lives in row ``c % window``. The query at ``c``
  needs keys ``c - window + 1 .. c``: the ``window - 1`` kept ones plus its own, which it
  writes over the one row nobody needs any more (``c - window``). Keys are stored after
  RoPE (at their position ids), so their place in the ring does not matter to attention.
- global branch and base (non-L2A) layers: ``max_cache_len`` rows, row ``c`` for token ``c``.

Beside the keys, the cache keeps per token (shared by all layers): its document id
(``docs``, ``(B, max_cache_len)``: the attention mask's segments, and packed documents of
the first prompt, so document boundaries stay right across calls), its attention-mask bit
(``bits``), and per ring row the cache index it holds (``slot_index``, -1: empty).

Two ways through it, chosen by host-side facts only (never by reading a device tensor):

- a *decoding step* (one new token per row, something cached already): every layer gets the
  whole buffers back and ``step`` holds the visibility masks (``(B, 1, keys)`` bool) built
  on the device from ``cache_position``: no host synchronisation, fixed shapes;
- anything else (prefills, chunks, several tokens per row): the keys come back in position
  order, as the growing cache (l2a/cache.py) returns them, for the prefill kernels.

The host keeps the number of cached tokens (``get_seq_length``); a CUDA-graph replay, which
runs no Python, advances it with ``advance`` (l2a/decode_graph.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from .cache import cache_slots, storage_bytes


@dataclass
class StepMasks:
    """Which keys the new tokens of a decoding step see: ``full (B, T, max_cache_len)`` for
    full buffers, ``window (B, T, window)`` for the rings (True: visible)."""

    full: torch.Tensor
    window: torch.Tensor


class _StaticBuffers(CacheLayerMixin):
    """Key / value buffers of ``rows`` rows, allocated at the first update (batch, heads,
    head dim, dtype and device from the keys, as transformers' ``StaticLayer``)."""

    is_compileable = True
    is_sliding = False

    def __init__(self, rows: int, owner: L2AStaticCache):
        super().__init__()
        self.rows = rows
        self.owner = owner

    def lazy_initialization(self, key_states, value_states) -> None:
        B, H, _, D = key_states.shape
        self.keys = key_states.new_zeros((B, H, self.rows, D))
        self.values = value_states.new_zeros((B, H, self.rows, value_states.shape[-1]))
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return self.owner.get_seq_length()

    def get_max_length(self) -> int:
        return self.owner.max_cache_len

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.rows, 0

    def allocated_bytes(self) -> int:
        return storage_bytes(self.keys, self.values) if self.is_initialized else 0

    def reorder_cache(self, beam_idx) -> None:
        if self.is_initialized:
            # In place: CUDA graphs captured on these buffers keep reading the same memory.
            self.keys.copy_(self.keys.index_select(0, beam_idx.to(self.device)))
            self.values.copy_(self.values.index_select(0, beam_idx.to(self.device)))

    def reset(self) -> None:
        if self.is_initialized:
            self.keys.zero_()
            self.values.zero_()


class StaticFullLayer(_StaticBuffers):
    """``max_cache_len`` rows: token ``c`` in row ``c``."""

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        step = self.owner.current
        if step.masks is not None:
            self.keys.index_copy_(2, step.cache_position, key_states)
            self.values.index_copy_(2, step.cache_position, value_states)
            return self.keys, self.values
        past, n = step.past, key_states.shape[-2]
        self.keys[:, :, past : past + n] = key_states
        self.values[:, :, past : past + n] = value_states
        return self.keys[:, :, : past + n], self.values[:, :, : past + n]

    def content_tokens(self) -> int:
        return self.owner.get_seq_length()


class StaticWindowLayer(_StaticBuffers):
    """A ring of ``window`` rows: token ``c`` in row ``c % window`` (module docstring)."""

    is_sliding = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        step, W = self.owner.current, self.rows
        if step.masks is not None:
            rows = step.cache_position % W
            self.keys.index_copy_(2, rows, key_states)
            self.values.index_copy_(2, rows, value_states)
            return self.keys, self.values
        past, n = step.past, key_states.shape[-2]
        dev = key_states.device
        kept = min(past, W - 1)  # the cached keys the first new query still sees
        if kept:
            order = torch.arange(past - kept, past, device=dev) % W
            keys = torch.cat([self.keys.index_select(2, order), key_states], dim=-2)
            values = torch.cat([self.values.index_select(2, order), value_states], dim=-2)
        else:
            keys, values = key_states, value_states
        first = max(0, n - W)  # only the last `window` new tokens stay in the ring
        rows = torch.arange(past + first, past + n, device=dev) % W
        self.keys.index_copy_(2, rows, key_states[:, :, first:])
        self.values.index_copy_(2, rows, value_states[:, :, first:])
        return keys, values

    def content_tokens(self) -> int:
        return min(self.owner.get_seq_length(), self.rows - 1)


@dataclass
class _Call:
    """What one forward tells the layers: the cached count before it (host), the new
    tokens' cache indices (device) and, in a decoding step, the visibility masks."""

    past: int
    cache_position: torch.Tensor
    masks: StepMasks | None


class L2AStaticCache(Cache):
    """``L2AStaticCache(config, max_cache_len)``: the static L2A cache (module docstring).

    ``max_cache_len``: the most tokens per row (prompt + generated) it holds; feeding more is
    a ValueError. Buffers are allocated at the first forward (batch size, dtype, device of
    that forward), or by ``early_initialization``."""

    def __init__(self, config, max_cache_len: int, **kwargs):
        if isinstance(max_cache_len, bool) or not isinstance(max_cache_len, int) or max_cache_len < 1:
            raise ValueError(f"L2AStaticCache: max_cache_len must be a positive int, got {max_cache_len!r}")
        self.max_cache_len = max_cache_len
        self.window = config.l2a_window
        layers = []
        for i, (_, global_slot) in enumerate(cache_slots(config)):
            if config.is_l2a_layer(i):
                layers.append(StaticWindowLayer(min(self.window, max_cache_len), self))
                if global_slot is not None:
                    layers.append(StaticFullLayer(max_cache_len, self))
            else:
                layers.append(StaticFullLayer(max_cache_len, self))
        super().__init__(layers=layers)
        self._length = 0
        self._one_doc = True  # every cached token so far in document 0 (host-side fact)
        self.docs = self.bits = self.slot_index = None
        self.current: _Call | None = None

    # -- transformers' Cache API -------------------------------------------------------
    # `max_cache_len` is a plain attribute here (transformers' base class has a deprecated
    # property of that name).
    max_cache_len = None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._length

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return self.max_cache_len

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        return self.layers[layer_idx].get_mask_sizes(query_length)

    @property
    def batch_size(self) -> int:
        return -1 if self.docs is None else self.docs.shape[0]

    def reorder_cache(self, beam_idx) -> None:
        super().reorder_cache(beam_idx)
        if self.docs is not None:
            idx = beam_idx.to(self.docs.device)
            self.docs.copy_(self.docs.index_select(0, idx))
            self.bits.copy_(self.bits.index_select(0, idx))

    def reset(self) -> None:
        super().reset()
        self._length, self._one_doc, self.current = 0, True, None
        if self.docs is not None:
            self.docs.zero_()
            self.bits.zero_()
            self.slot_index.fill_(-1)

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError(
            "L2AStaticCache cannot crop: its local rings have overwritten older keys "
            "(use the growing L2ACache for assisted decoding)"
        )

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("L2AStaticCache: the batch size is fixed (build it for the expanded batch)")

    def batch_select_indices(self, indices) -> None:
        raise NotImplementedError("L2AStaticCache: the batch size is fixed")

    def early_initialization(self, batch_size, num_heads, head_dim, dtype, device) -> None:
        super().early_initialization(batch_size, num_heads, head_dim, dtype, device)
        self._init_positions(batch_size, torch.device(device))

    # -- bytes ---------------------------------------------------------------------------
    def kv_bytes(self) -> int:
        """Bytes of the keys and values the next query may read (content): ``window - 1``
        tokens per ring, every cached token per full buffer."""
        total = 0
        for layer in self.layers:
            if layer.is_initialized:
                B, H, _, D = layer.keys.shape
                total += 2 * B * H * D * layer.keys.element_size() * layer.content_tokens()
        return total

    def allocated_bytes(self) -> int:
        """Bytes of the buffers (a ring holds one row more than its content: the row the
        next token writes)."""
        return sum(layer.allocated_bytes() for layer in self.layers)

    # -- per forward -----------------------------------------------------------------------
    def advance(self, tokens: int) -> None:
        """Count ``tokens`` more as cached: a CUDA-graph replay wrote them without Python."""
        self._length += tokens

    def is_decoding_step(self, seq: int) -> bool:
        """One new token per row onto a non-empty cache: the fixed-shape path."""
        return seq == 1 and self._length > 0

    def _init_positions(self, batch: int, device) -> None:
        if self.docs is None:
            L = self.max_cache_len
            self.docs = torch.zeros(batch, L, dtype=torch.int32, device=device)
            self.bits = torch.zeros(batch, L, dtype=torch.bool, device=device)
            self.slot_index = torch.full((min(self.window, L),), -1, dtype=torch.long, device=device)
        elif self.docs.shape[0] != batch:
            raise ValueError(
                f"L2AStaticCache: built for batch {self.docs.shape[0]}, got a batch of {batch}"
            )

    def _check_room(self, seq: int) -> None:
        if self._length + seq > self.max_cache_len:
            raise ValueError(
                f"L2AStaticCache: {self._length} cached + {seq} new tokens exceed "
                f"max_cache_len={self.max_cache_len}"
            )

    def _continue_docs(self, bits: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
        """Document ids of new tokens with mask bits ``bits (B, T)`` at ``cache_position``:
        the previous token's document, plus one at every change of the mask bit (the
        attention mask's segments, continued). On the device, no host synchronisation."""
        first = cache_position[:1]
        has_prev = first > 0
        prev = (first - 1).clamp(min=0)
        prev_doc = self.docs.index_select(1, prev)  # (B, 1)
        prev_bit = self.bits.index_select(1, prev)
        before = torch.cat([prev_bit, bits[:, :-1]], dim=1)
        change = (bits != before).to(torch.int32)
        change[:, :1] = change[:, :1] * has_prev.to(torch.int32)
        return prev_doc * has_prev.to(torch.int32) + torch.cumsum(change, dim=1, dtype=torch.int32)

    def begin_step(self, batch: int, device, attention_mask, cache_position=None) -> _Call:
        """A decoding step (``is_decoding_step``): record the new tokens' documents and ring
        rows, build the visibility masks. Only device work: CUDA graphs capture it.
        ``attention_mask``: None, or ``(B, past + 1)`` as generate passes it (its last column
        is the new token's bit)."""
        self._check_room(1)
        self._init_positions(batch, device)
        if cache_position is None:
            cache_position = torch.arange(self._length, self._length + 1, device=device)
        bits = (
            attention_mask[:, -1:].to(torch.bool)
            if attention_mask is not None
            else torch.ones(batch, 1, dtype=torch.bool, device=device)
        )
        docs = self._continue_docs(bits, cache_position)
        self.docs.index_copy_(1, cache_position, docs)
        self.bits.index_copy_(1, cache_position, bits)
        W = self.slot_index.shape[0]
        self.slot_index.index_copy_(0, cache_position % W, cache_position)
        q = cache_position[None, :, None]  # (1, 1, 1)
        q_doc = docs[:, :, None]  # (B, 1, 1)
        k_full = torch.arange(self.max_cache_len, device=device)[None, None, :]
        full = (k_full <= q) & (self.docs[:, None, :] == q_doc)
        k_win = self.slot_index[None, None, :]
        win_docs = self.docs.index_select(1, self.slot_index.clamp(min=0))[:, None, :]
        window = (k_win >= 0) & (k_win <= q) & (q - k_win < self.window) & (win_docs == q_doc)
        self.current = _Call(self._length, cache_position, StepMasks(full, window))
        return self.current

    def begin_prefill(self, batch: int, device, doc_ids, attention_mask, seq: int):
        """Any other forward (``seq`` new tokens; host-side bookkeeping allowed): record the
        new tokens' documents and ring rows. ``doc_ids``: what ``key_doc_ids`` gave for this
        call (``(B, past + seq)`` or None). Returns the document ids the kernels get for the
        ``past + seq`` keys (None: one document)."""
        self._check_room(seq)
        self._init_positions(batch, device)
        past = self._length
        cp = torch.arange(past, past + seq, device=device)
        bits = (
            attention_mask[:, -seq:].to(torch.bool)
            if attention_mask is not None
            else torch.ones(batch, seq, dtype=torch.bool, device=device)
        )
        if past == 0:
            docs = (
                doc_ids.expand(batch, -1).to(torch.int32)
                if doc_ids is not None
                else torch.zeros(batch, seq, dtype=torch.int32, device=device)
            )
        else:
            docs = self._continue_docs(bits, cp)
        self.docs[:, past : past + seq] = docs
        self.bits[:, past : past + seq] = bits
        W = self.slot_index.shape[0]
        first = max(0, seq - W)  # rows written once each: index_copy_ with repeats is undefined
        self.slot_index.index_copy_(0, cp[first:] % W, cp[first:])
        self._one_doc = self._one_doc and doc_ids is None
        self.current = _Call(past, cp, None)
        return None if self._one_doc else self.docs[:, : past + seq]

    def end(self, seq: int) -> None:
        """After the forward: ``seq`` tokens more are cached."""
        self._length += seq
        self.current = None
