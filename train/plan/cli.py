"""`python -m train.plan [overrides] --gpus N --gib M`: will this training config fit?

    python -m train.plan experiment=qwen3_128k --gpus 8 --gib 80
    python -m train.plan experiment=qwen3_128k train.sequence_parallel=4 --gpus 4 --gib 80
    python -m train.plan experiment=qwen3_128k --gpus 8 --gib 80 --shape qwen3_8b  # offline
    python -m train.plan --table        # the cases of docs/BENCHMARKS.md ("Memory model")
    python -m train.plan --check        # the measured SP=2 runs beside the predictions

The overrides are those of `python -m train` (the same config is composed and validated);
the plan reads the model's shape, `data.seq_len`, `train.sequence_parallel`,
`train.micro_batch_size`, `deepspeed.stage`, `train.tiled_mlp`, `train.offload_checkpoints`,
`train.precision` and `train.loss_chunk_size`, and prints the predicted peak per GPU, part
by part. Exit code: 0 fits, 1 does not fit, 2 a config it cannot read or does not model.
Not counted (keep a margin): allocator fragmentation and the caching allocator's reserve,
the CUDA / NCCL context, the attention kernels' own scratch.
"""

from __future__ import annotations

import argparse
import json
import sys

from train.plan.memory_model import GIB, auto_shards, checks, predict, table
from train.plan.shape import PlanError, shape_of

PARTS = ["params", "grads", "optimizer_states", "zero_buffers", "checkpointed_inputs",
         "layer_saved", "backward_transient", "loss", "peak"]


def plan(run_cfg, gpus: int, shape_name: str | None = None) -> dict:
    """The prediction for `run_cfg` (a validated RunConfig) on `gpus` ranks."""
    t = run_cfg.train
    if gpus < 1:
        raise PlanError(f"--gpus: must be >= 1, got {gpus}")
    if not t.activation_checkpointing:
        raise PlanError("train.activation_checkpointing: the memory model covers checkpointed "
                        "training only, got false")
    if t.trainable != "l2a":
        raise PlanError("train.trainable: the memory model covers the frozen MLPs and "
                        f"embeddings of `l2a` only, got {t.trainable!r}")
    sp = t.sequence_parallel
    if gpus % sp:
        raise PlanError(f"train.sequence_parallel: must divide --gpus ({gpus}), got {sp}")
    s = shape_of(run_cfg.model, shape_name)
    seq = run_cfg.data.seq_len
    tiled = t.tiled_mlp
    shards = (1 if tiled in ("off", None, 0, 1) else
              auto_shards(seq, sp, s.hidden) if tiled == "auto" else int(tiled))
    precision = "fp32" if t.precision == "fp32" else "bf16"  # auto: bf16 on a GPU
    variant = "l2a" if run_cfg.l2a.enabled else "dense"
    b = predict(s, variant, seq, gpus, sp, run_cfg.deepspeed.stage,
                micro_batch=t.micro_batch_size, tiled_mlp_shards=shards,
                offload_checkpoints=t.offload_checkpoints, precision=precision,
                loss_chunk=t.loss_chunk_size)
    return {"variant": variant, "shape": s.__dict__, "seq_len": seq, "gpus": gpus, "sp": sp,
            "zero": run_cfg.deepspeed.stage, "micro_batch": t.micro_batch_size,
            "tiled_mlp_shards": shards, "precision": precision, **b.gib(),
            "peak_bytes": b.peak}


def _compose(overrides: list[str]):
    from train.config import from_hydra
    from train.data.prepare import compose

    return from_hydra(compose("config", overrides), overrides)


def _print_rows(rows: list[dict], label: str) -> None:
    print(" | ".join([label, "variant", *PARTS]))
    for r in rows:
        print(" | ".join([str(r.get("case", r.get(label, ""))), r["variant"]]
                         + [f"{r[k]:.1f}" for k in PARTS if k in r]))


def _print_checks(rows: list[dict]) -> None:
    print("variant | seq_len | measured peak | predicted | measured activations | predicted")
    for r in rows:
        m = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        peak = (f"out of memory (needed >= {r['needed_at_least']:.1f})"
                if r["needed_at_least"] else m(r["measured_peak"]))
        print(f"{r['variant']} | {r['seq_len']} | {peak} | {r['predicted_peak']:.1f} | "
              f"{m(r['measured_activations'])} | {r['predicted_activations']:.1f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.plan", description=__doc__.splitlines()[0])
    p.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m train")
    p.add_argument("--gpus", type=int, help="GPUs of the run (ranks)")
    p.add_argument("--gib", type=float, help="memory of one GPU, GiB")
    p.add_argument("--shape", help="a known shape instead of model.base's config (offline)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--table", action="store_true", help="the cases of docs/BENCHMARKS.md")
    p.add_argument("--check", action="store_true",
                   help="the measured 2x H200 SP=2 runs against the model's predictions")
    args = p.parse_args(argv)
    if args.table or args.check:
        rows = table() if args.table else checks()
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            (_print_rows(rows, "case") if args.table else _print_checks(rows))
        return 0
    if args.gpus is None or args.gib is None:
        print("train.plan: error: --gpus and --gib are needed (or --table / --check)",
              file=sys.stderr)
        return 2
    from train.config import ConfigError

    try:
        result = plan(_compose(args.overrides), args.gpus, args.shape)
    except (ConfigError, PlanError) as e:
        print(f"train.plan: error: {e}", file=sys.stderr)
        return 2
    fits = result["peak_bytes"] <= args.gib * GIB
    result.update(gib_per_gpu=args.gib, fits=fits)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['variant']}, {result['seq_len']} tokens per row, {args.gpus} GPU(s), "
              f"sequence parallel {result['sp']}, ZeRO-{result['zero']}, "
              f"micro-batch {result['micro_batch']}, tiled MLP {result['tiled_mlp_shards']}")
        print("part                  GiB per GPU")
        for k in PARTS:
            print(f"{k:21s} {result[k]:8.1f}")
        verdict = "fits" if fits else "does not fit"
        print(f"{verdict}: predicted peak {result['peak']:.1f} GiB of {args.gib:g} GiB "
              f"({args.gib - result['peak']:+.1f} GiB); not counted: allocator fragmentation, "
              f"CUDA/NCCL context, kernel scratch")
    return 0 if fits else 1
