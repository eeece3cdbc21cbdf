"""The DeepSpeed config dict, filled from the validated run config.

Batch sizes, gradient accumulation, precision and clipping are set once in `train.*`; the
ZeRO settings come from the `deepspeed` group (`zero1`, `zero2`, `zero3`, `zero3_offload`).
"""

from __future__ import annotations

import copy

import torch

from train.config import ConfigError, RunConfig


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def torch_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def _zero_section(cfg: RunConfig) -> dict:
    z = cfg.deepspeed
    out = {
        "stage": z.stage,
        "overlap_comm": z.overlap_comm,
        "contiguous_gradients": z.contiguous_gradients,
        "reduce_bucket_size": z.reduce_bucket_size,
        "allgather_bucket_size": z.allgather_bucket_size,
    }
    if z.stage == 3:
        out.update(
            stage3_prefetch_bucket_size=z.stage3_prefetch_bucket_size,
            stage3_param_persistence_threshold=z.stage3_param_persistence_threshold,
            stage3_max_live_parameters=z.stage3_max_live_parameters,
            # Checkpoints are consolidated offline (train.export), not at save time.
            stage3_gather_16bit_weights_on_model_save=False,
        )
        del out["allgather_bucket_size"]
    if z.offload_optimizer != "none":
        out["offload_optimizer"] = {"device": z.offload_optimizer, "pin_memory": True}
    if z.offload_param != "none":
        out["offload_param"] = {"device": z.offload_param, "pin_memory": True}
    return out


def zero_stage_note(stage: int, zero_ranks: int, offload_param: str) -> str | None:
    """A one-line note when the ZeRO stage buys nothing for its cost: ZeRO-3 over one rank
    partitions its parameters into one piece (the same memory as ZeRO-2) but still runs its
    per-parameter gather/release hooks, the largest source of host syncs in a one-GPU step
    (docs/BENCHMARKS.md, "Where a 32K step's host time goes"). With parameter offload the
    stage does buy memory, so nothing is said. `zero_ranks`: the ranks ZeRO partitions over
    (the whole world; sequence-parallel ranks take part in it)."""
    if stage == 3 and zero_ranks == 1 and offload_param == "none":
        return ("deepspeed.stage=3 on one rank partitions nothing (ZeRO-2's memory) but adds a "
                "gather and a release per parameter: deepspeed=zero2 has the same memory without them")
    return None


def build_deepspeed_config(cfg: RunConfig, world_size: int, device: torch.device) -> dict:
    """`world_size`: the data-parallel size (world / train.sequence_parallel)."""
    t, o = cfg.train, cfg.optim
    precision = resolve_precision(t.precision, device)
    if precision == "bf16" and device.type == "cpu":
        raise ConfigError("train.precision: bf16 needs a GPU (use auto or fp32 on CPU), got 'bf16'")
    accum = t.grad_accum(world_size)
    ds = {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": accum,
        "train_batch_size": t.micro_batch_size * accum * world_size,
        "gradient_clipping": t.grad_clip,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": o.lr,
                "betas": list(o.betas),
                "eps": o.eps,
                "weight_decay": o.weight_decay,
                # The stock torch AdamW unless optim.fused on a GPU: DeepSpeed's fused Adam
                # compiles an extension on first use (~1 min).
                **({} if o.fused and device.type == "cuda" else {"torch_adam": True}),
            },
        },
        "bf16": {"enabled": precision == "bf16", "check_grad_overflow": True},
        "fp16": {"enabled": False},
        "zero_optimization": _zero_section(cfg),
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,  # the trainer logs
        "wall_clock_breakdown": False,
        "dump_state": False,
    }
    if t.sequence_parallel > 1:
        # Read by DeepSpeed where no mpu is passed (transformers' zero.Init at ZeRO-3 load):
        # batch sizes count data-parallel ranks, world / sequence_parallel.
        ds["sequence_parallel_size"] = t.sequence_parallel
    for k, v in copy.deepcopy(cfg.deepspeed.extra).items():
        if isinstance(v, dict) and isinstance(ds.get(k), dict):
            ds[k].update(v)
        else:
            ds[k] = v
    return ds
