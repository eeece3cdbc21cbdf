"""Training throughput of L2A against the dense baseline, in the same trainer.

A Qwen3-1.7B-shaped model with random weights (no download), 32K tokens per sequence,
DeepSpeed ZeRO-3, bf16, activation checkpointing, one sequence per GPU per step:

* `l2a`: the L2A model (Triton kernels), sparsity driven to `--sparsity-target` by the
  target controller so the measured steps run at a known sparsity;
* `l2a_full`: the same with `l2a.routed_projections=false` (the global branch's q/o
  projections for every token), for the before/after comparison;
* `l2a_fused`: `l2a` with `l2a.fused_elementwise=true` (l2a/fused.py);
* `l2a_routed`, `l2a_routed_fused`: `l2a`, `l2a_fused` with `l2a.routed_projections=true`
  (q/o projections of the global branch for routed tokens only; with
  `--sequence-parallel` > 1 through uneven all-to-alls of the routed query rows, tested
  on CPU with gloo only);
* `l2a_capacity`: `l2a_routed_fused` with `l2a.routed_rows=capacity` (the compacted
  queries as every row of the sequence, so no layer reads the routed count from the GPU:
  no host synchronisation per layer; the global branch's projections at full cost; one
  GPU or data parallelism only, refused with `--sequence-parallel` > 1);
* `dense`: the same base model without L2A, same trainable set (attention + norms),
  attention by `model.dense_attn_implementation=auto`: FlashAttention-4 where flash-attn-4
  is installed on Hopper / Blackwell, else SDPA restricted to the cuDNN (then flash) backend;
* `dense_sdpa`: the dense baseline on SDPA-cuDNN whatever is installed.

The JSON records the attention each variant ran (`attention`), every step's time, sparsity
and dense-path flag (`per_step`), and `speedups`: each L2A variant over each dense one.
The step time is also split by path: `routed_step_s` (mean over timed steps off the
stochastic dense path; `routed_step_median_s` beside it), `dense_path_step_s` (over
dense-path steps; with none in the timed window, those `--profile` ran before its routed
step; `dense_path_from` says which; null if neither) and `expected_step_s` (the two
weighted by `l2a.dense_prob`; null unless both are measured; the routed mean for dense
variants), with `tokens_per_s_per_gpu_routed` and `routed_speedups` from the routed mean:
with few timed steps one dense-path step moves the plain mean a lot.

`--pin-sparsity` (benchmark only) makes every L2A layer route exactly `1 - --sparsity-target`
of each row's tokens from the first step (the top tokens by router logit; bench/pin_sparsity.py)
instead of waiting for the target controller (tens of steps from random weights): the timed
steps of a short run at long context then run at the target. Recorded as `pinned_sparsity`.

Throughput is measured over the steps after `--skip-steps` (compilation, autotuning and the
sparsity ramp). Records tokens/s per GPU, peak GPU memory and the memory resident between
steps (parameters, gradient buffers, optimizer states: peak minus it is the activation
part; max over ranks), the model's shape and the achieved sparsity of each variant, as
JSON in `--out`, else `train_throughput.json` in `$L2A_RESULTS_DIR` (if set) or `bench/results/`.

`--sequence-parallel N` runs DeepSpeed-Ulysses over groups of N ranks (one row per group).
`--seq-len` takes a comma-separated list, run in order per variant: the first length that
runs out of GPU memory is recorded (`oom_at`, in `<out>.oom_<variant>.json` by the rank that
hit it) and ends the launch (a rank that ran out cannot take part in collectives any more),
so probe one variant per launch.

    torchrun --nproc_per_node=4 -m bench.train_throughput --steps 40
    torchrun --nproc_per_node=2 -m bench.train_throughput --variants dense --seq-len 16384
    torchrun --nproc_per_node=2 -m bench.train_throughput --model qwen3_8b_random \
        --sequence-parallel 2 --variants l2a --seq-len 131072,262144,393216,524288

Needs torch, triton, transformers, deepspeed, hydra-core, omegaconf and tqdm only (wandb
and datasets are not imported on this path: the wheels of scripts/offline_wheels.sh suffice).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from bench.results_dir import results_dir

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("l2a", "l2a_full", "l2a_fused", "l2a_routed", "l2a_routed_fused", "l2a_capacity",
            "dense", "dense_sdpa")
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


def synthetic_loader(cfg, seq_len: int, rank: int, sequence_parallel: int,
                     docs_per_row: int) -> SyntheticPackedLoader:
    """One row per step for `rank`: the ranks of a sequence-parallel group read the same row
    (the trainer gives each its slice), other groups other rows."""
    vocab = cfg.model.random_base["vocab_size"] or 256  # null: the byte tokenizer (tiny)
    return SyntheticPackedLoader(seq_len, 1, vocab, rank // max(sequence_parallel, 1),
                                 docs_per_row=docs_per_row)


def _config(args, variant: str, seq_len: int):
    from hydra import compose, initialize_config_dir

    import train.config  # noqa: F401  (resolver)
    from train.config import from_container

    overrides = [
        f"model={args.model}",
        f"deepspeed={args.deepspeed}",
        f"train.max_steps={args.steps}",
        f"train.sequence_parallel={args.sequence_parallel}",
        "train.micro_batch_size=1",
        "train.grad_accum_steps=1",
        f"train.precision={'bf16' if torch.cuda.is_available() else 'fp32'}",
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
        # Set here, not left to the model preset (qwen3_8b_random pins sdpa): `dense` is the
        # fastest dense baseline this machine has, `dense_sdpa` the cuDNN one.
        impl = "sdpa" if variant == "dense_sdpa" else "auto"
        overrides += ["l2a=dense", f"model.dense_attn_implementation={impl}"]
    else:
        overrides += [f"l2a.sparsity_target={args.sparsity_target}", "+l2a.target_ramp=0.0"]
        if variant == "l2a_full":
            overrides.append("l2a.routed_projections=false")
        if variant in ("l2a_routed", "l2a_routed_fused", "l2a_capacity"):
            overrides.append("l2a.routed_projections=true")
        if variant in ("l2a_fused", "l2a_routed_fused", "l2a_capacity"):
            overrides.append("l2a.fused_elementwise=true")
        if variant == "l2a_capacity":
            overrides.append("l2a.routed_rows=capacity")
    overrides += args.override
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=True)
    raw["data"] = SimpleNamespace(seq_len=seq_len)  # synthetic batches: no data pipeline
    return from_container(raw, data_builder=lambda d: d), overrides


def attention_used(cfg) -> dict:
    """What attention a variant runs on this machine, as resolved at build time."""
    from kernels.backends import resolve
    from train.build_model import dense_attn_implementation

    if not cfg.l2a.enabled:
        return {"dense": dense_attn_implementation(cfg.model.dense_attn_implementation, torch.bfloat16)}
    shape = cfg.model.random_base or {}
    head_dim = shape.get("head_dim") or shape.get("hidden_size", 4096) // shape.get("num_attention_heads", 32)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # --cpu-smoke
    probe = torch.empty(1, 1, 1, head_dim, device=device, dtype=torch.bfloat16)
    return {
        "l2a_backend": resolve(cfg.l2a.attn_backend, probe),
        "routed_projections": cfg.l2a.routed_projections,
        "routed_rows": cfg.l2a.routed_rows,
        "fused_elementwise": cfg.l2a.fused_elementwise,
    }


def _sync() -> None:
    if torch.cuda.is_available():  # else --cpu-smoke
        torch.cuda.synchronize()


def _timed_step(trainer, loader) -> float:
    _sync()
    t0 = time.perf_counter()
    trainer.train_step([next(loader)])
    _sync()
    return time.perf_counter() - t0


# Untimed dense-path steps before the timed ones: on one H100 at 32K (2026-12-07) the first
# dense-path step after a warm-up one still took 5.1 s against 2.3 s for the next.
DENSE_PATH_WARMUP_STEPS = 2


def time_warm_dense_path(trainer, loader, n: int = 2) -> list[float]:
    """Wall times of `n` dense-path steps after DENSE_PATH_WARMUP_STEPS untimed dense-path
    steps (compilation and autotuning), the trainer's draw forced to the dense path
    meanwhile: the dense-path step at the cost it has in a long run, where it recurs every
    1 / dense_prob steps."""
    draw = trainer.draw_dense
    trainer.draw_dense = lambda step: True
    try:
        for _ in range(DENSE_PATH_WARMUP_STEPS):
            _timed_step(trainer, loader)
        return [_timed_step(trainer, loader) for _ in range(n)]
    finally:
        trainer.draw_dense = draw


# Stochastic dense-path steps run (untraced) before the profiled routed step, at most this many.
MAX_DENSE_PATH_BEFORE_PROFILE = 3


def profile_step(trainer, loader, variant: str, rank: int, out_dir: Path, host: bool = True,
                 python_stacks: bool = False, trace_dir: Path | None = None) -> dict:
    """One more step under torch.profiler. Rank 0 writes the GPU time per kernel (top 40)
    to `out_dir/profile_<variant>.txt` and returns the step's kernel time per category
    (bench.kernel_categories: communication, attention, matmul, copy_index, elementwise,
    other) in ms: what the step's time goes to.

    The profiled step is a routed one, the kind that makes up 1 - dense_prob of a run: the
    trainer's dense-path draw is a function of the step, so a dense-path step drawn next runs
    first, untraced, and its wall time comes back as `dense_path_step_s` (a measurement of
    that kind of step, which a short timed window may lack).

    `host`: one more routed step traced on the host too (bench.host_profile: GPU busy,
    launches and syncs per step and per layer pass, host time by cause), returned under
    `host`; `python_stacks`: a third with the Python tracer (`host_python`: host time by
    package, the Python line behind each sync). Traces go to `trace_dir` and are deleted
    once read (they run to hundreds of MB at long context)."""
    from torch.profiler import ProfilerActivity, profile

    dense_path_s = []
    while trainer.draw_dense(trainer.step) and len(dense_path_s) < MAX_DENSE_PATH_BEFORE_PROFILE:
        dense_path_s.append(_timed_step(trainer, loader))
    profiled_dense = trainer.draw_dense(trainer.step)
    # --cpu-smoke: the operators stand for the kernels.
    activity = ProfilerActivity.CUDA if torch.cuda.is_available() else ProfilerActivity.CPU
    _sync()
    t0 = time.perf_counter()
    with profile(activities=[activity]) as prof:
        trainer.train_step([next(loader)])
        _sync()
    wall_ms = (time.perf_counter() - t0) * 1e3
    host_reports = {}
    if host:
        from bench.host_profile import profile_host, summary_lines

        tdir = Path(trace_dir or tempfile.mkdtemp(prefix="l2a-trace-"))
        modes = [("host", False)] + ([("host_python", True)] if python_stacks else [])
        for key, stacks in modes:
            # Routed steps only, like the kernel profile: a dense-path draw runs untraced.
            while trainer.draw_dense(trainer.step) and len(dense_path_s) < 2 * MAX_DENSE_PATH_BEFORE_PROFILE:
                dense_path_s.append(_timed_step(trainer, loader))
            trace = tdir / f"trace_{variant}_{key}_rank{rank}.json"
            report = profile_host(lambda: trainer.train_step([next(loader)]), trainer.module, trace, stacks)
            trace.unlink(missing_ok=True)
            host_reports[key] = report
            if rank == 0:
                print("\n".join(summary_lines(report, f"[{variant} {key}] ")), flush=True)
    if rank != 0:
        return {}
    from bench.kernel_categories import cuda_api_summary, kernel_category

    events = prof.key_averages()
    by_cat: dict[str, float] = {}
    for e in events:
        cat = kernel_category(e.key)
        by_cat[cat] = by_cat.get(cat, 0.0) + e.self_device_time_total / 1e3
    table = events.table(sort_by="self_device_time_total", row_limit=40, max_name_column_width=90)
    # The host side: on a one-GPU H200 machine the kernels filled 30-55% of a step's wall
    # time (2026-12-01); which API calls took the host's time says why.
    api_table = events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=90)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"profile_{variant}.txt").write_text(table + "\n\nBy host (CPU) time:\n" + api_table + "\n")
    print(f"[{variant}] profile of one step:\n{table[:6000]}", flush=True)
    return {"step_wall_ms": round(wall_ms, 1), "dense_path": profiled_dense,
            "dense_path_step_s": dense_path_s, "kernel_ms": round(sum(by_cat.values()), 1),
            "cuda_api": cuda_api_summary(events), **{k: round(v, 1) for k, v in by_cat.items()},
            **host_reports}


def _out_path(args) -> Path:
    if args.out:
        return Path(args.out)
    return results_dir() / "train_throughput.json"


def model_shape(config) -> dict:
    """What the results JSON records of the model (a preset name alone hides overrides)."""
    keys = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
            "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings")
    return {k: getattr(config, k, None) for k in keys}


def _max_over_ranks(value: float) -> float:
    import torch.distributed as dist

    t = torch.tensor([value], device="cuda" if torch.cuda.is_available() else "cpu")
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def run_variant(args, variant: str, seq_len: int) -> dict:
    from train.metrics import read_metrics
    from train.trainer import Trainer

    run_dir = Path(args.work_dir) / f"{variant}-{seq_len}"
    cfg, overrides = _config(args, variant, seq_len)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:  # a fresh run each time (train.resume=never refuses a directory in use)
        shutil.rmtree(run_dir, ignore_errors=True)
    loader = synthetic_loader(cfg, seq_len, rank, args.sequence_parallel, args.docs_per_row)
    cuda = torch.cuda.is_available()  # else --cpu-smoke: no memory figures
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    attn = contextlib.nullcontext()
    if variant.startswith("dense") and cuda:
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
    pinned = args.sparsity_target if args.pin_sparsity and cfg.l2a.enabled else None
    if pinned is not None:
        from bench.pin_sparsity import pin_routed_fraction

        if not pin_routed_fraction(trainer.module, pinned):
            raise SystemExit(f"{variant}: --pin-sparsity found no L2A layer with a global branch")
    shape = model_shape(trainer.model_config)
    n_params, n_trainable = trainer.n_params, trainer.n_trainable
    # Memory allocated at the end of every step (after the optimizer step, the activations
    # freed): parameters, gradient buffers and optimizer states of this rank.
    resident: list[float] = []
    step_fn = trainer.train_step

    def step_and_measure(batches):
        metrics = step_fn(batches)
        if cuda:
            torch.cuda.synchronize()
            resident.append(torch.cuda.memory_allocated() / 2**30)
        return metrics

    trainer.train_step = step_and_measure
    t0 = time.perf_counter()
    with attn:
        with _memory_limit(args, variant, seq_len, rank):
            code = trainer.fit()
        wall = time.perf_counter() - t0
        profile = None
        warm_dense = []
        if code == 0 and cfg.l2a.enabled and cfg.l2a.dense_prob > 0 and args.warm_dense_path_steps:
            warm_dense = time_warm_dense_path(trainer, loader, args.warm_dense_path_steps)
        if args.profile and code == 0:
            # Its `dense_path_step_s` (seconds) goes into the step-time split, not the kernel ms.
            profile = profile_step(trainer, loader, variant, rank, _out_path(args).parent,
                                   python_stacks=args.profile_python,
                                   trace_dir=Path(args.work_dir) / "traces")
    peak = _max_over_ranks(torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0)
    peak_reserved = _max_over_ranks(torch.cuda.max_memory_reserved() / 2**30 if cuda else 0.0)
    steady = _max_over_ranks(resident[-1] if resident else 0.0)
    world = trainer.dist.world_size
    trainer.close()
    del trainer
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    if code != 0:
        raise SystemExit(f"{variant}: trainer exited with {code}")
    result = {
        "variant": variant,
        "attention": attention_used(cfg),
        "exit_code": code,
        "wall_s": wall,
        "seq_len": seq_len,
        "sequence_parallel": args.sequence_parallel,
        "model_shape": shape,
        "params": n_params,
        "trainable_params": n_trainable,
        "peak_memory_gib": round(peak, 2),
        "peak_reserved_gib": round(peak_reserved, 2),
        # Parameters + gradient buffers + optimizer states (allocated between steps).
        "resident_between_steps_gib": round(steady, 2),
        "activation_peak_gib": round(peak - steady, 2),
        "pinned_sparsity": pinned,
    }
    if rank == 0:
        rows = read_metrics(run_dir)
        timed = [r for r in rows if r["step"] > args.skip_steps]
        step_s = sum(r["step_time_s"] for r in timed) / max(len(timed), 1)
        tokens_per_step = seq_len * world // args.sequence_parallel
        split = step_time_split(timed, cfg.l2a.dense_prob if cfg.l2a.enabled else 0.0,
                                (profile or {}).pop("dense_path_step_s", ()), warm_dense)
        routed_s = split["routed_step_s"]
        result.update(
            steps=len(rows),
            timed_steps=len(timed),
            mean_step_s=step_s,
            tokens_per_s_per_gpu=tokens_per_step / step_s / world if timed else None,
            **split,
            tokens_per_s_per_gpu_routed=tokens_per_step / routed_s / world if routed_s else None,
            tokens_per_s_per_gpu_expected=(tokens_per_step / split["expected_step_s"] / world
                                           if split["expected_step_s"] else None),
            warm_dense_path_steps_s=warm_dense,
            sparsity=sum(r["sparsity"] for r in timed) / max(len(timed), 1),
            final_sparsity=rows[-1]["sparsity"] if rows else None,
            final_lm_loss=rows[-1]["lm_loss"] if rows else None,
            # Per step: with few timed steps, a stochastic dense-path step (`dense`) or a
            # sparsity still settling shows here.
            per_step=[{k: r.get(k) for k in ("step", "step_time_s", "sparsity", "dense")} for r in rows],
            overrides=overrides,
        )
        if profile:
            result["profile_kernel_ms"] = profile
    return result


def step_time_split(timed: list[dict], dense_prob: float, later_dense_path_s: list[float] = (),
                    warm_dense_path_s: list[float] = ()) -> dict:
    """Mean step time of the timed steps off and on the stochastic dense path, and the
    expected step time at `dense_prob` (the fraction of dense-path steps in a long run).
    `warm_dense_path_s`: dense-path steps timed after a warm-up dense-path step
    (`time_warm_dense_path`); they win, since a dense-path step in a short window is often the
    run's first, its compilation included. Else the window's dense-path steps; else
    `later_dense_path_s` (drawn after the window, before --profile's step). `dense_path_from`
    says which."""
    def mean(xs):
        return sum(xs) / len(xs) if xs else None

    routed_times = [r["step_time_s"] for r in timed if not r.get("dense")]
    routed = mean(routed_times)
    dense_path = mean([r["step_time_s"] for r in timed if r.get("dense")])
    source = "timed steps" if dense_path is not None else None
    if warm_dense_path_s:
        dense_path, source = statistics.median(warm_dense_path_s), "warm steps after a warm-up"
    elif dense_path is None and later_dense_path_s:
        dense_path, source = mean(list(later_dense_path_s)), "after the timed steps"
    if routed is None or (dense_prob > 0 and dense_path is None):
        expected = None
    elif dense_prob > 0:
        expected = (1.0 - dense_prob) * routed + dense_prob * dense_path
    else:
        expected = routed
    # The median beside the mean: with few timed steps one slow step (a second step still
    # warming up: 34-51 s against a steady 12-22 s in one-GPU 128K runs) moves the mean.
    median = statistics.median(routed_times) if routed_times else None
    return {"routed_step_s": routed, "routed_step_median_s": median, "dense_path_step_s": dense_path,
            "dense_path_from": source, "expected_step_s": expected}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="l2a,dense", help=f"comma-separated: {', '.join(VARIANTS)}")
    p.add_argument("--model", default="qwen3_1p7b_random", help="conf/model option")
    p.add_argument("--deepspeed", default="zero2",
                   help="conf/deepspeed option (zero2, as the presets: on one GPU ZeRO-3 partitions nothing)")
    p.add_argument("--seq-len", default="32768",
                   help="tokens per sequence; a comma-separated list probes lengths in order, "
                   "stopping at the first that runs out of memory")
    p.add_argument("--sequence-parallel", type=int, default=1,
                   help="ranks per sequence (DeepSpeed-Ulysses); 1: off")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--skip-steps", type=int, default=10, help="steps left out of the timing")
    p.add_argument("--sparsity-target", type=float, default=0.8)
    p.add_argument("--pin-sparsity", action="store_true",
                   help="L2A variants route exactly 1 - --sparsity-target of each row's tokens "
                   "(top by router logit) from the first step, not after the controller's ramp "
                   "(benchmark only; recorded as pinned_sparsity)")
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
    p.add_argument("--warm-dense-path-steps", type=int, default=2,
                   help="L2A with dense_prob > 0: after the timed window, time this many "
                   "dense-path steps after one dense-path warm-up (0: off)")
    p.add_argument("--profile-python", action="store_true",
                   help="with --profile: one more step with the Python tracer (host time by "
                   "package, the Python line behind every host sync; bench.host_profile)")
    p.add_argument("--stop-above-gib", type=float, default=None,
                   help="end the launch once a GPU's allocated peak passes this many GiB, "
                   "recording when (a memory probe: the rest of the step adds nothing)")
    p.add_argument("--override", action="append", default=[], help="extra Hydra override")
    p.add_argument("--cpu-smoke", action="store_true",
                   help="allow a CPU run (fp32, gloo) to check that a command starts: use "
                   "with a tiny shape through --override model.random_base.*=...")
    p.add_argument("--work-dir", default=None, help="run dirs (default: a temporary dir)")
    p.add_argument(
        "--out",
        default=None,
        help="result JSON (default: train_throughput.json in $L2A_RESULTS_DIR or bench/results/)",
    )
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        print(f"--variants: expected a comma-separated list of {', '.join(VARIANTS)}, got "
              f"{args.variants!r}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("bench.train_throughput needs CUDA GPUs (--cpu-smoke: check the command starts, "
              "fp32 on CPU, no memory figures)", file=sys.stderr)
        return 1
    # NVLink multicast (NVLS, symmetric-memory multicast) off unless the environment says
    # otherwise: the recorded results (bench/results/) ran without it; NCCL_NVLS_ENABLE=1
    # and TORCH_SYMM_MEM_DISABLE_MULTICAST=0 measure with it. NCCL inherits these.
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    from train.distributed import broadcast_object, init_distributed

    init_distributed()
    args.work_dir = broadcast_object(args.work_dir or tempfile.mkdtemp(prefix="l2a-bench-"))
    seq_lens = [int(x) for x in str(args.seq_len).split(",") if x.strip()]
    rank = int(os.environ.get("RANK", "0"))
    results: dict = {}
    for variant in variants:
        for seq_len in seq_lens:
            key = variant if len(seq_lens) == 1 else f"{variant}@{seq_len}"
            try:
                results[key] = run_variant(args, variant, seq_len)
            except torch.cuda.OutOfMemoryError as e:
                _record_oom(args, variant, seq_len, rank, e, results)
                os._exit(3)  # the other ranks wait in a collective: end the launch
            if rank == 0:
                _write_report(args, results, final=False)
    if rank != 0:
        return 0
    _write_report(args, results, final=True)
    return 0


def _record_oom(args, variant: str, seq_len: int, rank: int, err: Exception, results: dict) -> None:
    out = _out_path(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    fits = [r["seq_len"] for r in results.values() if r["variant"] == variant]
    record = {"variant": variant, "oom_at": seq_len, "longest_ok": max(fits) if fits else None,
              "rank": rank, "sequence_parallel": args.sequence_parallel, "model": args.model,
              "error": str(err).strip().splitlines()[0][:400]}
    path = out.with_name(f"{out.stem}.oom_{variant}.json")
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"out of memory: {json.dumps(record)}", file=sys.stderr, flush=True)


def _memory_limit(args, variant: str, seq_len: int, rank: int):
    """--stop-above-gib: a watch over this GPU's allocated peak that records the probe's
    answer and ends the launch once the peak passes the bound (a no-op otherwise)."""
    if not (torch.cuda.is_available() and args.stop_above_gib):
        return contextlib.nullcontext()
    from bench.memory_limit import MemoryLimitWatch, cuda_peak_reader

    def over_limit(peak: int, seconds: float) -> None:
        _record_over_limit(args, variant, seq_len, rank, peak, seconds)
        os._exit(3)  # the other ranks wait in a collective: end the launch

    return MemoryLimitWatch(int(args.stop_above_gib * 2**30),
                            cuda_peak_reader(torch.cuda.current_device()), over_limit)


def _record_over_limit(args, variant: str, seq_len: int, rank: int, peak: int,
                       seconds: float) -> None:
    """--stop-above-gib: the probe's answer (this length needs more than the bound), written
    before the launch is ended."""
    out = _out_path(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"variant": variant, "seq_len": seq_len, "rank": rank,
              "limit_gib": args.stop_above_gib, "peak_gib_when_stopped": round(peak / 2**30, 2),
              "seconds_into_run": round(seconds, 1),
              "gpu": torch.cuda.get_device_name(0), "num_gpus": int(os.environ.get("WORLD_SIZE", "1")),
              "sequence_parallel": args.sequence_parallel, "model": args.model,
              "deepspeed": args.deepspeed, "overrides": args.override,
              "note": "stopped when the allocated peak passed the limit; the full peak of the "
                      "step is at least this"}
    path = out.with_name(f"{out.stem}.over_limit_{variant}_rank{rank}.json")
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"over the memory limit: {json.dumps(record)}", file=sys.stderr, flush=True)


def speedups(results: dict, rate_key: str = "tokens_per_s_per_gpu") -> dict:
    """tokens/s per GPU (`rate_key`) of every L2A variant over every dense one of the same
    length, e.g. `l2a_fused/dense` (the fastest dense baseline here) and
    `l2a_fused/dense_sdpa`."""
    def rate(r):
        return r.get(rate_key)

    out = {}
    for key, r in results.items():
        for dkey, d in results.items():
            if (r["variant"].startswith("l2a") and d["variant"].startswith("dense")
                    and r["seq_len"] == d["seq_len"] and rate(r) and rate(d)):
                out[f"{key}/{dkey}"] = round(rate(r) / rate(d), 3)
    return out


# Train variants -> the bench.op_counts variants of their layer passes.
_OP_COUNT_VARIANTS = {
    "l2a": ("l2a_routed", "l2a_dense_path"), "l2a_full": ("l2a", "l2a_dense_path"),
    "l2a_fused": ("l2a_routed_fused", "l2a_dense_path_fused"),
    "l2a_routed": ("l2a_routed", "l2a_dense_path"),
    "l2a_routed_fused": ("l2a_routed_fused", "l2a_dense_path_fused"),
    "l2a_capacity": ("l2a_capacity", "l2a_dense_path_fused"),
    "dense": ("dense",), "dense_sdpa": ("dense",),
}


def _layer_op_counts(results: dict) -> dict:
    """Host syncs and launches per layer pass of the variants run, counted on the CPU
    (bench.op_counts: the numbers tests/bench/test_op_counts.py holds) beside the GPU's."""
    from bench.op_counts import layer_op_counts

    wanted = sorted({v for r in results.values() for v in _OP_COUNT_VARIANTS.get(r["variant"], ())})
    return layer_op_counts(variants=wanted) if wanted else {}


def _write_report(args, results: dict, final: bool) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    report = {
        "benchmark": "train_throughput",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "num_gpus": world,
        "model": f"{args.model} (random weights)",
        "model_shape": next(iter(results.values()))["model_shape"] if results else None,
        "sequence_parallel": args.sequence_parallel,
        "seq_len": args.seq_len,
        "deepspeed": args.deepspeed,
        "precision": "bf16" if torch.cuda.is_available() else "fp32",
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
    if final and results:
        report["layer_op_counts"] = _layer_op_counts(results)
    from kernels.fallbacks import fallbacks

    report["fallbacks"] = fallbacks()  # a backend that failed and was replaced: not the numbers asked for
    report["speedups"] = speedups(results)
    report["routed_speedups"] = speedups(results, "tokens_per_s_per_gpu_routed")
    # Dense-path steps counted at their rate: the speed-up of a long run.
    report["expected_speedups"] = speedups(results, "tokens_per_s_per_gpu_expected")
    out = _out_path(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if final:
        print(json.dumps(report, indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    raise SystemExit(main())
