"""Training throughput of L2A against the dense baseline, in the same trainer.

A Qwen3-1.7B-shaped model with random weights (no download), 32K tokens per sequence,
DeepSpeed ZeRO-3, bf16, activation checkpointing, one sequence per GPU per step:

* `l2a`: the L2A model (Triton kernels), sparsity driven to `--sparsity-target` by the
  target controller so the measured steps run at a known sparsity;
* `l2a_full`: the same with `l2a.routed_projections=false` (the global branch's q/o
  projections for every token), for the before/after comparison;
* `l2a_fused`: `l2a` with `l2a.fused_elementwise=true` (l2a/fused.py);
* `dense`: the same base model without L2A, same trainable set (attention + norms),
  attention by `model.dense_attn_implementation=auto`: FlashAttention-4 where flash-attn-4
  is installed on Hopper / Blackwell, else SDPA restricted to the cuDNN (then flash) backend;
* `dense_sdpa`: the dense baseline on SDPA-cuDNN whatever is installed.

The JSON records the attention each variant ran (`attention`).

Throughput is measured over the steps after `--skip-steps` (compilation, autotuning and the
sparsity ramp). Records tokens/s per GPU, peak GPU memory (max over ranks) and the achieved
sparsity of each variant, as JSON in `$OUT/` (if set) or `bench/results/`.

    torchrun --nproc_per_node=4 -m bench.train_throughput --steps 40
    torchrun --nproc_per_node=2 -m bench.train_throughput --variants dense --seq-len 16384

Needs torch, triton, transformers, deepspeed, hydra-core, omegaconf and tqdm only (wandb
and datasets are not imported on this path; see scripts/device_wheels.sh).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"


class SyntheticPackedLoader:
    """Random-token rows of `seq_len` with `docs_per_row` documents each (position ids restart
    per document, labels -100 on document starts), deterministic per (seed, rank, step)."""

    def __init__(
        self,
        seq_len: int,
        micro_batch_size: int,
        vocab_size: int,
        rank: int,
        seed: int = 0,
        docs_per_row: int = 1,
    ):
        self.seq_len, self.mb, self.vocab = seq_len, micro_batch_size, vocab_size
        self.rank, self.seed, self.docs = rank, seed, docs_per_row
        self.step = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rank * 10_007 + self.step)
        self.step += 1
        ids = torch.randint(0, self.vocab, (self.mb, self.seq_len), generator=g)
        pos = torch.empty_like(ids)
        labels = ids.clone()
        for b in range(self.mb):
            cuts = torch.randperm(self.seq_len - 1, generator=g)[: self.docs - 1] + 1
            starts = [0, *sorted(cuts.tolist())]
            ends = starts[1:] + [self.seq_len]
            for s, e in zip(starts, ends):
                pos[b, s:e] = torch.arange(e - s)
                labels[b, s] = -100
        return {"input_ids": ids, "position_ids": pos, "labels": labels}

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def _config(args, variant: str, run_dir: Path):
    from hydra import compose, initialize_config_dir

    import train.config  # noqa: F401  (resolver)
    from train.config import from_container

    overrides = [
        f"model={args.model}",
        f"deepspeed={args.deepspeed}",
        f"train.max_steps={args.steps}",
        "train.micro_batch_size=1",
        "train.grad_accum_steps=1",
        "train.precision=bf16",
        f"train.activation_checkpointing={str(not args.no_activation_checkpointing).lower()}",
        "train.ckpt_every=0",
        "train.save_final=false",
        "train.export=false",
        "train.plot=false",
        "train.resume=never",
        "train.wandb.mode=disabled",
        f"optim.lr={args.lr}",
        "optim.warmup_steps=1",
        f"l2a.window={args.window}",
    ]
    if variant.startswith("dense"):
        overrides.append("l2a=dense")
        if variant == "dense_sdpa":
            overrides.append("model.dense_attn_implementation=sdpa")
    else:
        overrides += [f"l2a.sparsity_target={args.sparsity_target}", "+l2a.target_ramp=0.0"]
        if variant == "l2a_full":
            overrides.append("l2a.routed_projections=false")
        if variant == "l2a_fused":
            overrides.append("l2a.fused_elementwise=true")
    overrides += args.override
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=True)
    raw["data"] = SimpleNamespace(seq_len=args.seq_len)  # synthetic batches: no data pipeline
    return from_container(raw, data_builder=lambda d: d), overrides


def attention_used(cfg) -> dict:
    """What attention a variant runs on this machine, as resolved at build time."""
    from kernels.backends import resolve
    from train.build_model import dense_attn_implementation

    if not cfg.l2a.enabled:
        return {"dense": dense_attn_implementation(cfg.model.dense_attn_implementation, torch.bfloat16)}
    shape = cfg.model.random_base or {}
    head_dim = shape.get("head_dim") or shape.get("hidden_size", 4096) // shape.get("num_attention_heads", 32)
    probe = torch.empty(1, 1, 1, head_dim, device="cuda", dtype=torch.bfloat16)
    return {
        "l2a_backend": resolve(cfg.l2a.attn_backend, probe),
        "routed_projections": cfg.l2a.routed_projections,
        "fused_elementwise": cfg.l2a.fused_elementwise,
    }


def kernel_category(name: str) -> str:
    """Coarse class of a GPU kernel by its name, for the per-step breakdown."""
    n = name.lower()
    if n.startswith("nccl"):
        return "nccl"
    if n.startswith("attn_") or any(k in n for k in ("sdpa", "fmha", "flash", "flex")):
        return "attention"
    if n.startswith(("nvjet", "cutlass")) or "gemm" in n or "xmma" in n:
        return "matmul"
    return "other"  # elementwise ops, copies, reductions, norms


def profile_step(trainer, loader, variant: str, rank: int, out_dir: Path) -> dict:
    """One more step under torch.profiler. Rank 0 writes the GPU time per kernel (top 40)
    to `out_dir/profile_<variant>.txt` and returns the step's kernel time per category
    (attention, matmul, nccl, other) in ms: what the step's time goes to."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        trainer.train_step([next(loader)])
        torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t0) * 1e3
    if rank != 0:
        return {}
    events = prof.key_averages()
    by_cat: dict[str, float] = {}
    for e in events:
        cat = kernel_category(e.key)
        by_cat[cat] = by_cat.get(cat, 0.0) + e.self_device_time_total / 1e3
    table = events.table(sort_by="self_device_time_total", row_limit=40, max_name_column_width=90)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"profile_{variant}.txt").write_text(table + "\n")
    print(f"[{variant}] profile of one step:\n{table[:6000]}", flush=True)
    return {"step_wall_ms": round(wall_ms, 1), **{k: round(v, 1) for k, v in by_cat.items()}}


def _out_path(args) -> Path:
    if args.out:
        return Path(args.out)
    base = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "bench" / "results"
    return base / "train_throughput.json"


def run_variant(args, variant: str) -> dict:
    import torch.distributed as dist

    from train.metrics import read_metrics
    from train.trainer import Trainer

    run_dir = Path(args.work_dir) / variant
    cfg, overrides = _config(args, variant, run_dir)
    rank = int(os.environ.get("RANK", "0"))
    vocab = cfg.model.random_base["vocab_size"]
    loader = SyntheticPackedLoader(args.seq_len, 1, vocab, rank, docs_per_row=args.docs_per_row)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    attn = contextlib.nullcontext()
    if variant.startswith("dense"):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        # cuDNN first; flash, then memory-efficient, where cuDNN cannot take the call
        # (e.g. the block mask of --docs-per-row > 1).
        attn = sdpa_kernel(
            [
                SDPBackend.CUDNN_ATTENTION,
                SDPBackend.FLASH_ATTENTION,
                SDPBackend.EFFICIENT_ATTENTION,
            ],
            set_priority=True,
        )
    trainer = Trainer(cfg, run_dir, overrides, loader=loader)
    t0 = time.perf_counter()
    with attn:
        code = trainer.fit()
        wall = time.perf_counter() - t0
        profile = None
        if args.profile and code == 0:
            profile = profile_step(trainer, loader, variant, rank, _out_path(args).parent)
    peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30], device="cuda")
    if dist.is_initialized():
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    world = trainer.dist.world_size
    trainer.close()
    del trainer
    gc.collect()
    torch.cuda.empty_cache()
    if code != 0:
        raise SystemExit(f"{variant}: trainer exited with {code}")
    result = {
        "variant": variant,
        "attention": attention_used(cfg),
        "exit_code": code,
        "wall_s": wall,
        "peak_memory_gib": round(float(peak.item()), 2),
    }
    if rank == 0:
        rows = read_metrics(run_dir)
        timed = [r for r in rows if r["step"] > args.skip_steps]
        step_s = sum(r["step_time_s"] for r in timed) / max(len(timed), 1)
        tokens_per_step = args.seq_len * world
        result.update(
            steps=len(rows),
            timed_steps=len(timed),
            mean_step_s=step_s,
            tokens_per_s_per_gpu=tokens_per_step / step_s / world if timed else None,
            sparsity=sum(r["sparsity"] for r in timed) / max(len(timed), 1),
            final_sparsity=rows[-1]["sparsity"] if rows else None,
            final_lm_loss=rows[-1]["lm_loss"] if rows else None,
            overrides=overrides,
        )
        if profile:
            result["profile_kernel_ms"] = profile
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="l2a,dense", help="comma-separated: l2a, l2a_full, l2a_fused, dense, dense_sdpa")
    p.add_argument("--model", default="qwen3_1p7b_random", help="conf/model option")
    p.add_argument("--deepspeed", default="zero3", help="conf/deepspeed option")
    p.add_argument("--seq-len", type=int, default=32768)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--skip-steps", type=int, default=10, help="steps left out of the timing")
    p.add_argument("--sparsity-target", type=float, default=0.8)
    p.add_argument("--window", type=int, default=4095)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument(
        "--docs-per-row",
        type=int,
        default=1,
        help="documents packed per sequence (1: plain causal attention for both)",
    )
    p.add_argument("--no-activation-checkpointing", action="store_true")
    p.add_argument(
        "--profile",
        action="store_true",
        help="after the timed steps, profile one more step: kernel time per category in the "
        "JSON, the top kernels in profile_<variant>.txt beside it",
    )
    p.add_argument("--override", action="append", default=[], help="extra Hydra override")
    p.add_argument("--work-dir", default=None, help="run dirs (default: a temporary dir)")
    p.add_argument(
        "--out",
        default=None,
        help="result JSON (default: $OUT/train_throughput.json or bench/results/)",
    )
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench.train_throughput needs CUDA GPUs", file=sys.stderr)
        return 1
    # Keep NVLink multicast off (shared hosts): NCCL inherits these.
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    from train.distributed import broadcast_object, init_distributed

    init_distributed()
    args.work_dir = broadcast_object(args.work_dir or tempfile.mkdtemp(prefix="l2a-bench-"))
    results = {}
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        results[variant] = run_variant(args, variant)
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:
        return 0
    world = int(os.environ.get("WORLD_SIZE", "1"))
    report = {
        "benchmark": "train_throughput",
        "gpu": torch.cuda.get_device_name(0),
        "num_gpus": world,
        "model": f"{args.model} (random weights)",
        "seq_len": args.seq_len,
        "deepspeed": args.deepspeed,
        "precision": "bf16",
        "activation_checkpointing": not args.no_activation_checkpointing,
        "docs_per_row": args.docs_per_row,
        "steps": args.steps,
        "skip_steps": args.skip_steps,
        "torch": torch.__version__,
        "results": results,
    }
    if "l2a" in results and "dense" in results and results["dense"].get("tokens_per_s_per_gpu"):
        report["l2a_speedup"] = (
            results["l2a"]["tokens_per_s_per_gpu"] / results["dense"]["tokens_per_s_per_gpu"]
        )
    out = _out_path(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
