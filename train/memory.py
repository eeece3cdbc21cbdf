"""Activation-memory options, applied to a built model from outside (the model code knows
nothing of them):

* ``train.tiled_mlp`` (off | auto | N): each decoder layer's MLP runs through DeepSpeed's
  ``TiledMLP`` (ALST, ``deepspeed.runtime.sequence_parallel.ulysses_sp``): the sequence is cut
  into N shards, the forward keeps only the MLP input, and the backward recomputes one shard
  at a time. Without it, the recomputed MLP of one checkpointed layer holds three
  ``tokens x intermediate`` tensors (gate, silu(gate), up: 9 GiB per layer at 128K tokens
  for Qwen3-8B); with it, one ``tokens x hidden`` input plus one shard's intermediates.
  ``auto`` = ceil(tokens / hidden), DeepSpeed's rule (a shard's intermediate is about
  ``hidden x intermediate`` elements). The cost: with activation checkpointing the MLP's
  forward runs three times per step instead of twice (the forward, the layer's
  recomputation, which still computes every shard, and the per-shard recomputation in
  TiledMLP's backward), plus one kernel sequence per shard.
* ``train.offload_checkpoints``: the tensors autograd saves outside the checkpointed layers,
  above all each checkpointed layer's input (``tokens x hidden`` per layer, the part of the
  activations that grows with the number of layers), live in pinned CPU memory between the
  forward and the backward (``torch.autograd.graph.save_on_cpu``). Inside a checkpointed
  layer nothing changes: those tensors are recomputed, not saved.
"""

from __future__ import annotations

import contextlib
import functools
import math
import types

import torch
from torch import nn


def tiled_mlp_shards(setting: str | int, tokens: int, hidden: int) -> int:
    """Shards for `tokens` rows of width `hidden` (1 = untiled). `setting`: off | auto | N."""
    if setting == "off":
        return 1
    n = math.ceil(tokens / hidden) if setting == "auto" else int(setting)
    n = max(1, min(n, tokens))
    # torch.chunk gives ceil(tokens / ceil(tokens / n)) pieces, which can be fewer than n;
    # TiledMLP's backward marks a trainable weight's gradient ready on shard `n`, so pass
    # the number of pieces there will be.
    return math.ceil(tokens / math.ceil(tokens / n))


def is_gated_mlp(module: nn.Module) -> bool:
    """A Qwen2/Qwen3 (Llama-style) MLP: down(act(gate(x)) * up(x))."""
    return all(hasattr(module, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn"))


def _mlp_math(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))


@functools.cache
def _tiled_mlp_function():
    """DeepSpeed's ``TiledMLP`` whose forward writes each shard's output into one
    preallocated tensor instead of concatenating the shards at the end: the list of shard
    outputs and their concatenation are two ``tokens x hidden`` tensors at once, and with
    activation checkpointing this forward runs again in the layer's recomputation, at the
    step's memory peak. Backward is DeepSpeed's."""
    from deepspeed.runtime.sequence_parallel.ulysses_sp import TiledMLP

    class TiledMLPInPlace(TiledMLP):
        @staticmethod
        def forward(ctx, fn, self, x, shards, compute_params):
            ctx.fn, ctx.self, ctx.shards = fn, self, shards
            ctx.compute_params = [p for p in compute_params if p.requires_grad]
            ctx.save_for_backward(x)
            out = None
            with torch.no_grad():
                parts = torch.chunk(x, chunks=shards, dim=-2)
                offset = 0
                for x_shard in parts:
                    y = fn(self, x_shard)
                    if out is None:  # the output's width is the function's (hidden)
                        out = y.new_empty(*x.shape[:-1], y.shape[-1])
                    out.narrow(-2, offset, y.shape[-2]).copy_(y)
                    offset += y.shape[-2]
                    del y
            return out

    return TiledMLPInPlace


def _tiled_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # TiledMLP's backward cuts the flattened (batch * seq) rows: count those. Every rank
    # sees rows of the same length (packed to data.seq_len), so all ranks use the same
    # number of shards, which ZeRO-3 needs (each shard gathers the MLP's weights).
    shards = tiled_mlp_shards(self.l2a_tiled_mlp, x[..., 0].numel(), x.shape[-1])
    if shards <= 1:
        return _mlp_math(self, x)
    params = [p for p in self.parameters() if p.requires_grad]
    return _tiled_mlp_function().apply(_mlp_math, self, x, shards, params)


def enable_tiled_mlp(model: nn.Module, setting: str | int) -> int:
    """Route every gated MLP of `model` through TiledMLP; returns how many were changed."""
    if setting == "off":
        return 0
    count = 0
    for module in model.modules():
        if is_gated_mlp(module):
            module.l2a_tiled_mlp = setting
            module.forward = types.MethodType(_tiled_forward, module)
            count += 1
    if count == 0:
        raise ValueError("train.tiled_mlp: the model has no gated MLP (gate_proj/up_proj/down_proj)")
    return count


class CheckpointOffload(torch.autograd.graph.saved_tensors_hooks):
    """``save_on_cpu`` (pinned when the tensor is on a GPU) that also counts what it moved,
    so tests and the memory breakdown can see which tensors went to the host."""

    def __init__(self) -> None:
        self.packed_bytes = 0
        self.packed_shapes: list[tuple[int, ...]] = []

        def pack(t: torch.Tensor):
            self.packed_bytes += t.numel() * t.element_size()
            self.packed_shapes.append(tuple(t.shape))
            pin = t.is_cuda and not t.is_sparse
            host = torch.empty(t.size(), dtype=t.dtype, layout=t.layout, pin_memory=pin)
            host.copy_(t)
            return t.device, host

        def unpack(packed):
            device, host = packed
            return host.to(device, non_blocking=host.is_pinned())

        super().__init__(pack, unpack)


def offload_context(enabled: bool):
    """The context the decoder stack's forward runs in (see the module doc)."""
    return CheckpointOffload() if enabled else contextlib.nullcontext()
