"""Activation-memory options, applied to a built model from outside (the model code knows
nothing of them):

* ``train.tiled_mlp`` (off | auto | N): each decoder layer's MLP runs through DeepSpeed's
  ``TiledMLP`` (ALST, ``deepspeed.runtime.sequence_parallel.ulysses_sp``): the sequence is cut
  into N shards, the forward keeps only the MLP input, and the backward recomputes one shard
  at a time. Without it, the recomputed MLP of one checkpointed layer holds three
  ``tokens x intermediate`` tensors (gate, silu(gate), up: 9 GiB per layer at 128K tokens
  for Qwen3-8B); with it, one ``tokens x hidden`` input plus one shard's intermediates.
  ``auto`` tiles only when the step would not fit the GPU untiled
  (``auto_tiled_mlp_shards``: a first-principles estimate of the step's peak from the
  shape, dtype, GPU memory, world size and ZeRO stage), and then in the fewest shards that
  fit, none shorter than ``MIN_SHARD_TOKENS`` (a shard's matmuls must stay large enough
  for the GPU to run them efficiently: at DeepSpeed's ``ceil(tokens / hidden)`` a
  Qwen3-1.7B step at 128K made 16,000 MLP matmuls of ~80 us). The cost: with activation checkpointing the MLP's
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
from dataclasses import dataclass

import torch
from torch import nn


# The shortest shard `auto` makes: an 8K x hidden by hidden x intermediate matmul keeps a
# GPU's tensor cores busy; much shorter ones are launch- and tail-bound.
MIN_SHARD_TOKENS = 8192
# The part of the GPU's memory the estimated peak may take (the rest: the CUDA / NCCL
# context, the caching allocator's fragmentation, what the estimate leaves out).
MEMORY_HEADROOM = 0.85
# ZeRO's buffers (gradient-reduction bucket, gathered layer, prefetch), in bytes.
ZERO_BUFFERS = 2 * 2**30


@dataclass(frozen=True)
class StepShape:
    """What a training step's peak memory per GPU depends on (bench.memory_model writes
    the same terms out in full). `tokens`: per GPU (micro batch x sequence / SP)."""

    hidden: int
    intermediate: int
    layers: int
    q_width: int  # heads x head_dim
    kv_width: int
    params: int  # all parameters of the model
    trainable: int
    tokens: int
    dtype_bytes: int = 2  # bf16
    world: int = 1  # data-parallel ranks that ZeRO partitions over
    zero_stage: int = 3
    l2a: bool = True


def step_peak_bytes(s: StepShape, shards: int = 1) -> float:
    """Estimated peak bytes per GPU of a step with activation checkpointing: parameters,
    gradients and Adam states as the ZeRO stage partitions them, every layer's checkpointed
    input, the tensors one recomputed layer saves (the MLP's three ``tokens x intermediate``
    intermediates untiled, only its input tiled) and the backward's transient gradients
    (of the MLP's intermediates: all tokens untiled, one shard tiled)."""
    b, t, h, inter = s.dtype_bytes, s.tokens, s.hidden, s.intermediate
    params = b * s.params / (s.world if s.zero_stage == 3 else 1)
    grads = b * s.trainable / (s.world if s.zero_stage >= 2 else 1)
    states = (12 if b == 2 else 8) * s.trainable / (s.world if s.zero_stage >= 1 else 1)
    checkpoints = s.layers * h * t * b
    branch = h + 4 * s.q_width + 3 * s.kv_width  # norm output, q and k before / after RoPE, v, o
    saved = branch * (2 if s.l2a else 1) + (2 * h if s.l2a else h)  # + the norms' inputs
    if shards <= 1:
        # ZeRO-3's memory-efficient linear also keeps the frozen MLP's input and down_proj's.
        saved += 3 * inter + ((h + inter) if s.zero_stage == 3 else 0)
        transient = 2 * h + 2 * inter
    else:
        saved += h
        transient = 2 * h + 5 * inter / shards
    activations = (saved + transient) * t * b
    return params + grads + states + ZERO_BUFFERS + checkpoints + activations


def auto_tiled_mlp_shards(s: StepShape, gpu_bytes: int | None) -> int:
    """`train.tiled_mlp=auto`: 1 (untiled) when the step fits `gpu_bytes` untiled (or there
    is no GPU), else the fewest shards of at least MIN_SHARD_TOKENS tokens that fit; the
    most such shards when none fits (tiling's saving is near its limit by then)."""
    if gpu_bytes is None:
        return 1
    budget = MEMORY_HEADROOM * gpu_bytes
    if step_peak_bytes(s, 1) <= budget:
        return 1
    most = max(2, s.tokens // MIN_SHARD_TOKENS)
    for n in range(2, most + 1):
        if step_peak_bytes(s, n) <= budget:
            return n
    return most


def step_shape_of(model: nn.Module, tokens: int, dtype_bytes: int, world: int, zero_stage: int,
                  l2a: bool, train_everything: bool = False) -> StepShape:
    """The StepShape of a built model (parameter counts of a ZeRO-3 partitioned one included)."""
    from l2a.trainable import trainable_parameter_names

    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    keep = None if train_everything else set(trainable_parameter_names(model))
    params = trainable = 0
    for name, p in model.named_parameters():
        n = getattr(p, "ds_numel", p.numel())
        params += n
        trainable += n if keep is None or name in keep else 0
    return StepShape(hidden=c.hidden_size, intermediate=c.intermediate_size,
                     layers=c.num_hidden_layers, q_width=c.num_attention_heads * head_dim,
                     kv_width=c.num_key_value_heads * head_dim, params=params,
                     trainable=trainable, tokens=tokens, dtype_bytes=dtype_bytes, world=world,
                     zero_stage=zero_stage, l2a=l2a)


def resolve_tiled_mlp(setting: str | int, shape_of, device: torch.device) -> str | int:
    """`train.tiled_mlp` as the trainer applies it: `auto` resolved to `off` or a shard
    count (`shape_of()`: the step's StepShape, built only for `auto`); others unchanged."""
    if setting != "auto":
        return setting
    gpu = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    shards = auto_tiled_mlp_shards(shape_of(), gpu)
    return "off" if shards <= 1 else shards


def tiled_mlp_shards(setting: str | int, tokens: int, hidden: int) -> int:
    """Shards for `tokens` rows of width `hidden` (1 = untiled). `setting`: off | N (or
    auto, once the trainer has not resolved it: shards of MIN_SHARD_TOKENS)."""
    if setting == "off":
        return 1
    n = math.ceil(tokens / MIN_SHARD_TOKENS) if setting == "auto" else int(setting)
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
