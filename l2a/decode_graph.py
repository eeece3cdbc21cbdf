"""Decoding steps as CUDA-graph replays (the gpt-fast recipe) on a static L2A cache.

A decoding step on an ``L2AStaticCache`` has fixed shapes and takes no decision on the host
(l2a/static_cache.py; the routing decision stays on the device): one step is a fixed
sequence of kernels. ``GraphedDecoder`` runs it once or twice (warm-up: lazy buffers,
cuBLAS handles), captures it with ``torch.cuda.graphs`` on static input buffers (token ids,
position ids, the cache index), and replays the graph for every later token: one launch
per token instead of some thousand.

``model.generate(..., cache_implementation="static")`` uses it on CUDA: transformers asks
the model for its compiled decoding call (``get_compiled_call``) when the cache is static,
and an L2A model answers with ``GraphedCall``, which replays a captured step for decoding
steps and runs everything else (the prefill) eagerly. ``capture=False`` runs the same
static-buffer step without a graph (CPU, tests).
"""

from __future__ import annotations

import torch

from .static_cache import L2AStaticCache

# Warm-up steps before the capture (outside the graph: lazy allocations, library handles).
WARM_UP_STEPS = 2


class GraphedDecoder:
    """One captured decoding step of ``model`` on ``cache`` (batch size fixed by the cache).

    ``step(input_ids (B, 1), position_ids (B, 1) or None) -> (logits (B, 1, V), routes)``:
    the outputs are copies (the graph's own output buffers are overwritten by the next
    replay). The new tokens count as real (attention-mask bit 1), as in ``generate``."""

    def __init__(self, model, cache: L2AStaticCache, capture: bool | None = None):
        if not isinstance(cache, L2AStaticCache):
            raise ValueError(f"GraphedDecoder: needs an L2AStaticCache, got {type(cache).__name__}")
        self.model, self.cache = model, cache
        self.capture = capture
        self.graph = None
        self.replays = 0
        self._ids = self._pos = self._cp = self._out = None

    def _run(self):
        return self.model(
            input_ids=self._ids,
            position_ids=self._pos,
            cache_position=self._cp,
            past_key_values=self.cache,
            use_cache=True,
        )

    def _setup(self, input_ids) -> None:
        device = input_ids.device
        if self.capture is None:
            self.capture = device.type == "cuda"
        self._ids = torch.zeros_like(input_ids)
        self._pos = torch.zeros_like(input_ids)
        self._cp = torch.zeros(1, dtype=torch.long, device=device)

    def _capture(self) -> None:
        """Warm-up and capture; the cache's host count is restored (they wrote the row the
        real step writes, with the same inputs, so the cache content is as before)."""
        n = self.cache.get_seq_length()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(WARM_UP_STEPS):
                self._run()
                self.cache.advance(n - self.cache.get_seq_length())
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._out = self._run()
        self.cache.advance(n - self.cache.get_seq_length())

    @torch.no_grad()
    def step(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None):
        cache = self.cache
        if input_ids.dim() != 2 or input_ids.shape[1] != 1:
            raise ValueError(f"GraphedDecoder.step: expected input_ids (B, 1), got {tuple(input_ids.shape)}")
        if not cache.is_decoding_step(1):
            raise ValueError("GraphedDecoder.step: the cache is empty (prefill it eagerly first)")
        cache._check_room(1)
        if self._ids is None:
            self._setup(input_ids)
        n = cache.get_seq_length()
        self._ids.copy_(input_ids)
        self._cp.fill_(n)  # a fill kernel: no host synchronisation
        if position_ids is None:
            self._pos.copy_(self._cp.expand_as(self._pos))
        else:
            self._pos.copy_(position_ids)
        if not self.capture:
            out = self._run()
            return out.logits.clone(), tuple(r.clone() for r in out.routes)
        if self.graph is None:
            self._capture()
        self.graph.replay()
        cache.advance(1)
        self.replays += 1
        return self._out.logits.clone(), tuple(r.clone() for r in self._out.routes)


# Keyword arguments of generate's decoding call that a captured step honours as they come.
_PLAIN = {"use_cache", "return_dict", "logits_to_keep", "output_attentions", "output_hidden_states"}


class GraphedCall:
    """The decoding call ``generate`` uses on a static cache (``get_compiled_call``):
    decoding steps of an ``L2AStaticCache`` through a ``GraphedDecoder`` (captured once per
    cache), every other call eagerly."""

    def __init__(self, model, capture: bool | None = None):
        self.model = model
        self.capture = capture
        self.decoder: GraphedDecoder | None = None
        self.eager_calls = 0

    def _graphable(self, input_ids, cache, inputs_embeds, kwargs) -> bool:
        if not isinstance(cache, L2AStaticCache) or inputs_embeds is not None or input_ids is None:
            return False
        if set(kwargs) - _PLAIN or kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
            return False
        return cache.is_decoding_step(input_ids.shape[1])

    def __call__(self, input_ids=None, past_key_values=None, position_ids=None, attention_mask=None,
                 inputs_embeds=None, **kwargs):
        from .outputs import L2ACausalLMOutputWithPast

        if not self._graphable(input_ids, past_key_values, inputs_embeds, kwargs):
            self.eager_calls += 1
            return self.model(input_ids=input_ids, past_key_values=past_key_values,
                              position_ids=position_ids, attention_mask=attention_mask,
                              inputs_embeds=inputs_embeds, **kwargs)
        if self.decoder is None or self.decoder.cache is not past_key_values:
            self.decoder = GraphedDecoder(self.model, past_key_values, self.capture)
        logits, routes = self.decoder.step(input_ids, position_ids)
        return L2ACausalLMOutputWithPast(logits=logits, past_key_values=past_key_values, routes=routes)
