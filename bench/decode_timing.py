"""Decode timing for bench.inference: ms per token as the median of single steps after a
warm-up, the bytes a step must read, and the card's copy bandwidth (the memory-bound floor).

Modes: ``eager`` (the growing caches, l2a.cache; every step a Python forward) and ``graph``
(static caches, every step a CUDA-graph replay: l2a.decode_graph for the L2A models,
transformers' StaticCache captured the same way for the dense base). Without CUDA the
graph mode runs the same static-cache step eagerly (a smoke run of the code path).
"""

from __future__ import annotations

import statistics
import time

import torch

DECODE_MODES = ("eager", "graph")


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device, nbytes: int | None = None, repeats: int = 10) -> float:
    """GB/s of a device-to-device copy (bytes read + bytes written per second), median of
    ``repeats`` copies of ``nbytes`` (1 GiB on a GPU, 64 MiB elsewhere)."""
    nbytes = nbytes or (1 << 30 if device.type == "cuda" else 1 << 26)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = []
    for i in range(repeats + 2):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    del src, dst
    return 2 * nbytes / statistics.median(times) / 1e9


def weight_bytes_per_step(model, batch: int) -> int:
    """Weights a decoding step reads: every parameter once, but of the input embedding only
    the ``batch`` rows looked up (unless it is tied to the output projection)."""
    params = {p.data_ptr(): p for p in model.parameters()}
    total = sum(p.numel() * p.element_size() for p in params.values())
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    if out is None or out.weight.data_ptr() != emb.data_ptr():
        total -= emb.numel() * emb.element_size()
        total += batch * emb.shape[1] * emb.element_size()
    return total


def _per_token_kv(config, itemsize: int) -> int:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_key_value_heads * head_dim * itemsize


def kv_bytes_per_step(config, context: int, batch: int, itemsize: int, routes=None) -> int:
    """Keys and values a step at ``context`` cached tokens must read. Dense (``config`` of a
    base model, or a layer outside ``l2a_layers``): all of them. L2A: the local window
    (``window`` keys with the new one) and, of the global cache, only the rows whose token
    routed: ``routes`` maps each global-branch layer to its routed fraction per row
    (``(batch,)``, averaged over the steps)."""
    per_token = _per_token_kv(config, itemsize)
    if not hasattr(config, "l2a_window"):
        return config.num_hidden_layers * context * batch * per_token
    total = 0
    for i in range(config.num_hidden_layers):
        if not config.is_l2a_layer(i):
            total += context * batch * per_token
            continue
        total += min(context, config.l2a_window) * batch * per_token
        if config.has_global_branch(i):
            routed = float(routes[i].sum()) if routes is not None else float(batch)
            total += int(round(routed * context)) * per_token
    return total


class StaticGraphStep:
    """A decoding step of a transformers model on its ``StaticCache`` as a CUDA-graph replay
    (the dense base; its cache layers advance their device-side lengths inside the graph).
    ``capture=False``: the same step, eagerly."""

    def __init__(self, model, cache, capture: bool):
        self.model, self.cache, self.capture = model, cache, capture
        self.graph = self._ids = self._pos = None

    def _run(self):
        return self.model(input_ids=self._ids, position_ids=self._pos, past_key_values=self.cache,
                          use_cache=True)

    def _lengths(self):
        return [layer.cumulative_length for layer in self.cache.layers]

    @torch.no_grad()
    def step(self, ids, pos):
        if self._ids is None:
            self._ids, self._pos = ids.clone(), pos.clone()
        self._ids.copy_(ids)
        self._pos.copy_(pos)
        if not self.capture:
            return self._run().logits.clone(), None
        if self.graph is None:
            saved = [n.clone() for n in self._lengths()]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._run()
                    for n, s in zip(self._lengths(), saved):
                        n.copy_(s)
            torch.cuda.current_stream().wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._out = self._run()
        self.graph.replay()
        return self._out.logits.clone(), None


def static_dense_cache(model, grown, max_cache_len: int):
    """A transformers StaticCache holding what the growing ``grown`` (l2a.cache.DenseCache)
    holds: the prefill runs on the growing cache (a static cache's prefill would build a
    prompt x max_cache_len mask), then the keys are copied over."""
    from transformers import StaticCache

    first = grown.layers[0].keys
    B, H, n, D = first.shape
    cache = StaticCache(config=model.config, max_cache_len=max_cache_len)
    cache.early_initialization(B, H, D, first.dtype, first.device)
    for dst, src in zip(cache.layers, grown.layers):
        dst.keys[:, :, :n] = src.keys
        dst.values[:, :, :n] = src.values
        dst.cumulative_length.fill_(n)
    return cache


def time_steps(step, nxt, pos, warmup: int, steps: int, device):
    """Greedy decoding: ``warmup`` untimed steps, then ``steps`` timed one by one (wall time
    to a synchronised device). ``step(ids, pos) -> (logits, routes or None)``. Returns the
    step times (s) and the routes of the timed steps."""
    times, routes = [], []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        logits, r = step(nxt, pos)
        nxt = logits[:, -1:].argmax(-1)
        _sync(device)
        pos = pos + 1
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            if r:
                routes.append(torch.stack([x[:, -1] for x in r]).float())  # (global layers, B)
    return times, routes


def summarise(times, routes, model, context: int, batch: int, copy_gbps: float, itemsize: int) -> dict:
    """The row of one (mode, batch): median ms per token, bytes a step must read, the
    implied GB/s and the memory-bound floor (bytes / the measured copy bandwidth)."""
    med = statistics.median(times)
    config = model.config
    layer_routes = None
    if routes:
        mean = torch.stack(routes).mean(0)  # (global layers, B)
        ids = [i for i in range(config.num_hidden_layers) if config.has_global_branch(i)]
        layer_routes = dict(zip(ids, mean))
    kv = kv_bytes_per_step(config, context, batch, itemsize, layer_routes)
    weights = weight_bytes_per_step(model, batch)
    step_bytes = kv + weights
    floor_s = step_bytes / (copy_gbps * 1e9)
    return {
        "batch": batch,
        "steps": len(times),
        "ms_per_token": round(1000 * med, 3),
        "tokens_per_s": round(batch / med, 2),
        "bytes_per_step": step_bytes,
        "weight_bytes_per_step": weights,
        "kv_bytes_per_step": kv,
        "gb_per_s": round(step_bytes / med / 1e9, 2),
        "floor_ms": round(1000 * floor_s, 3),
        "times_floor": round(med / floor_s, 2),
        "routed_fraction_decode": round(float(torch.stack(routes).mean()), 4) if routes else None,
    }
