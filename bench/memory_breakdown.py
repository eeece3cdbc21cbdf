"""Where the memory of one training step goes, for L2A and the dense baseline.

For each variant (same trainer, model shape, sequence length, ZeRO stage, bf16, activation
checkpointing as `bench.train_throughput`):

* static parts, counted from the DeepSpeed engine's own tensors: parameters (the partitions
  a rank holds), gradient partitions, fp32 master weights, Adam moments, ZeRO buffers;
* the peak of a measured step (`torch.cuda.max_memory_allocated`, max over ranks) and its
  activation part (peak minus parameters, gradients, master weights and optimizer states);
* the live allocations at the peak (replayed from `torch.cuda.memory._record_memory_history`),
  grouped by the code that allocated them and by category (checkpointed layer inputs, the
  recomputed layer, attention, norms, MLP, loss, ZeRO, backward);
* the tensors one decoder layer saves for its backward (saved-tensor hooks, one layer at
  the model's width and `--layer-tokens` tokens), per token, beside the memory model's
  `layer_saved_bytes_per_token` (train/plan/memory_model.py).

GPU (one process per GPU):

    torchrun --nproc_per_node=2 -m bench.memory_breakdown --model qwen3_8b_random \\
        --seq-len 131072 --variants l2a,dense [--sequence-parallel 2] [--tiled-mlp auto]

CPU (a degenerate form for tests and laptops: a tiny model in fp32, one process, the static
accounting and the per-layer saved tensors, no peak):

    python -m bench.memory_breakdown --cpu

Writes JSON into `--out`, else into `$L2A_RESULTS_DIR` (if set) or `bench/results/`, named
after the GPU, the model shape, the sequence length, the sequence-parallel size and the ZeRO
stage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from bench.results_dir import results_dir

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- static parts
def _storage_key(t: torch.Tensor) -> tuple:
    return (t.device, t.untyped_storage().data_ptr())


def _bytes_unique(tensors, seen: set) -> int:
    """Bytes of the storages of `tensors` not counted yet (views and shared storages once)."""
    n = 0
    for t in tensors:
        if t is None or not torch.is_tensor(t) or t.numel() == 0:
            continue
        key = _storage_key(t)
        if key in seen:
            continue
        seen.add(key)
        n += t.untyped_storage().nbytes()
    return n


def engine_static_bytes(engine) -> dict:
    """Bytes this rank holds for parameters, gradient partitions, fp32 master weights, Adam
    moments and ZeRO buffers, from the engine's tensors (each storage counted once, in that
    order: an fp32 run whose master weights are the parameters counts them as parameters)."""
    seen: set = set()
    params = [getattr(p, "ds_tensor", None) if hasattr(p, "ds_tensor") else p.data
              for p in engine.module.parameters()]
    opt = engine.optimizer
    inner = getattr(opt, "optimizer", opt)
    out = {"params": _bytes_unique(params, seen)}
    grads = getattr(opt, "grad_partitions_flat_buffer", None)  # ZeRO-3
    if grads is not None:
        out["grads"] = _bytes_unique([grads], seen)
    else:
        # ZeRO-1/2 and 0: gradients live in the parameters' .grad (full or partitioned
        # during the step); counted where present.
        out["grads"] = _bytes_unique([p.grad for p in engine.module.parameters()], seen)
    # ZeRO-3 keeps its fp32 partitions in `fp32_partitioned_groups_flat` (what the inner
    # optimizer steps on); elsewhere the inner optimizer's parameters are the master copy.
    # (In an fp32 run they are the very tensors of `fp16_partitioned_groups_flat`, which
    # are parameters: not a second copy.)
    working = {id(t) for t in getattr(opt, "fp16_partitioned_groups_flat", None) or []}
    masters = [t for t in getattr(opt, "fp32_partitioned_groups_flat", None) or []
               if id(t) not in working]
    masters += [p for g in inner.param_groups for p in g["params"]]
    out["master_weights"] = _bytes_unique(masters, seen)
    out["optimizer_states"] = _bytes_unique(
        [v for st in inner.state.values() for v in st.values() if torch.is_tensor(v) and v.dim() > 0],
        seen)
    buckets = getattr(opt, "ipg_buckets", None) or {}
    out["zero_buffers"] = _bytes_unique([getattr(b, "buffer", None) for b in buckets.values()], seen)
    return out


# --------------------------------------------------------------------------- saved tensors
def saved_tensor_bytes(fn, exclude: set | None = None) -> dict:
    """Run `fn()` and count what autograd saves for backward: unique storages, leaving out
    those in `exclude` (parameters). Returns total bytes and bytes per (dtype, grad_fn)."""
    exclude = exclude or set()
    seen: dict = {}

    def pack(t):
        key = _storage_key(t)
        if key not in exclude and key not in seen:
            src = t.grad_fn.name() if t.grad_fn is not None else "leaf"
            seen[key] = (t.untyped_storage().nbytes(), f"{str(t.dtype).replace('torch.', '')} {src}")
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    by_kind: dict = {}
    for n, kind in seen.values():
        by_kind[kind] = by_kind.get(kind, 0) + n
    return {"total": sum(n for n, _ in seen.values()),
            "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1]))}


def layer_saved_bytes(variant: str, shape: dict, tokens: int, device: torch.device,
                      dtype: torch.dtype, tiled_mlp: str | int = "off", window: int = 4095) -> dict:
    """The tensors one decoder layer of `shape` (a model.random_base dict) saves for its
    backward on `tokens` tokens (one sequence), trainable as in training; per token too."""
    from l2a.convert import convert_model
    from l2a.layers import AttentionContext
    from l2a.trainable import mark_trainable
    from train.memory import enable_tiled_mlp
    from train.tiny_base import qwen3_config, random_qwen3

    one = {**shape, "num_hidden_layers": 1, "vocab_size": 128}
    config = qwen3_config(one, max_position_embeddings=max(tokens, 4096))
    base = random_qwen3(config, seed=0, device=device, dtype=dtype,
                        attn_implementation=None if variant == "l2a" else "sdpa")
    model = convert_model(base, init="paper", window=window) if variant == "l2a" else base
    model.to(device=device, dtype=dtype).train()
    mark_trainable(model)
    enable_tiled_mlp(model, tiled_mlp)
    layer = model.model.layers[0]
    x = torch.randn(1, tokens, config.hidden_size, device=device, dtype=dtype, requires_grad=True)
    pos = torch.arange(tokens, device=device)[None]
    pe = model.model.rotary_emb(x, pos)
    params = {_storage_key(p) for p in model.parameters()}
    if variant == "l2a":
        ctx = AttentionContext(doc_ids=None, backend="auto")
        result = saved_tensor_bytes(lambda: layer(x, position_embeddings=pe, ctx=ctx), params)
    else:
        result = saved_tensor_bytes(
            lambda: layer(x, position_embeddings=pe, attention_mask=None, position_ids=pos), params)
    result["per_token"] = result["total"] / tokens
    result["tokens"] = tokens
    # Once a ZeRO-3 engine exists, F.linear is DeepSpeed's (it saves every linear's input).
    result["zero3_linear"] = getattr(torch.nn.functional.linear, "__name__", "") == "zero3_linear_wrap"
    return result


# --------------------------------------------------------------------------- the peak
_ULYSSES_A2A = ("_partition_global_sequence", "_combine_local_sequences")

CATEGORIES = [
    # (category, predicate on one frame's "file:function" string). An allocation takes the
    # category of its innermost frame that matches any of these, checked in this order: the
    # tiled MLP's backward recomputes the whole layer, so every allocation of that
    # recomputation has the tiled MLP on its stack, further out than what made it.
    ("loss (chunked LM head + cross-entropy)", lambda f: "train/losses.py" in f),
    ("ZeRO (gathered parameters, gradient buckets)", lambda f: "deepspeed/runtime/zero" in f),
    ("Ulysses all-to-all (attention's sequence parallelism)",
     lambda f: "ulysses_sp.py" in f and f.rsplit(":", 1)[-1] in _ULYSSES_A2A),
    ("attention kernels", lambda f: "/kernels/" in f or "sdpa_attention" in f),
    ("norms", lambda f: "rmsnorm.py" in f or "RMSNorm.forward" in f),
    ("router", lambda f: "router_logit.py" in f),
    ("tiled MLP", lambda f: "ulysses_sp.py" in f or "train/memory.py" in f),
    ("MLP", lambda f: "MLP.forward" in f),
]


def _site(frames: list[dict]) -> tuple[str, str]:
    """(site, category) of an allocation from its Python frames (innermost first)."""
    names = [f"{fr.get('filename', '')}:{fr.get('name', '')}" for fr in frames]
    ours = [fr for fr in frames if not ("/torch/" in fr.get("filename", "")
                                        or fr.get("filename", "").startswith("<"))]
    site = (f"{Path(ours[0]['filename']).name}:{ours[0]['line']} {ours[0]['name']}" if ours
            else "(no Python frame: autograd backward)")
    joined = "\n".join(names)
    recompute = "recompute_fn" in joined or "unpack_hook" in joined
    for name in names:  # innermost first
        for cat, pred in CATEGORIES:
            if pred(name):
                return site, (cat + (" [recomputed layer]" if recompute else ""))
    if not ours:
        return site, "backward (autograd)"
    if recompute:
        return site, "recomputed layer (other)"
    if any("decoder" in n.lower() or "layers.py" in n or "modeling_qwen" in n for n in names):
        return site, "layer forward (kept: checkpointed layer inputs and outputs)"
    return site, "other"


def peak_allocations(snapshot: dict, device: int, start_bytes: int, top: int = 25) -> dict:
    """Replay the allocation trace of `device`: when the allocated bytes peaked, and which
    allocations (made while recording) were live then, grouped by site and category.
    `start_bytes`: what was allocated when recording started (not in the trace)."""
    trace = snapshot["device_traces"][device]
    cur = peak = start_bytes
    peak_i = -1
    for i, ev in enumerate(trace):
        if ev["action"] == "alloc":
            cur += ev["size"]
        elif ev["action"] == "free_completed":
            cur -= ev["size"]
        if cur > peak:
            peak, peak_i = cur, i
    live: dict = {}
    for ev in trace[: peak_i + 1]:
        if ev["action"] == "alloc":
            live[ev["addr"]] = ev
        elif ev["action"] == "free_completed":
            live.pop(ev["addr"], None)
    sites: dict = {}
    cats: dict = {}
    for ev in live.values():
        site, cat = _site(ev.get("frames", []))
        s = sites.setdefault((site, cat), [0, 0])
        s[0] += ev["size"]
        s[1] += 1
        cats[cat] = cats.get(cat, 0) + ev["size"]
    top_sites = sorted(sites.items(), key=lambda kv: -kv[1][0])[:top]
    return {
        "replayed_peak_bytes": peak,
        "allocated_before_recording_bytes": start_bytes,
        "trace_events": len(trace),
        "by_category_gib": {k: round(v / 2**30, 3) for k, v in
                            sorted(cats.items(), key=lambda kv: -kv[1])},
        "top_sites": [{"site": s, "category": c, "bytes": n, "gib": round(n / 2**30, 3),
                       "allocations": k} for (s, c), (n, k) in top_sites],
    }


# --------------------------------------------------------------------------- runs
def _shape_of(cfg) -> dict:
    rb = cfg.model.random_base or {}
    return {k: rb.get(k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                   "num_key_value_heads", "head_dim", "intermediate_size",
                                   "vocab_size")}


def _overrides(args) -> list[str]:
    # (bench.train_throughput's `_config` sets the sequence-parallel size from the args.)
    return [f"train.tiled_mlp={args.tiled_mlp}",
            f"train.offload_checkpoints={str(args.offload_checkpoints).lower()}"]


def _throughput_args(args) -> SimpleNamespace:
    """The argument namespace bench.train_throughput's `_config` reads (its options, with
    their defaults where this benchmark has none)."""
    return SimpleNamespace(
        model=args.model, deepspeed=args.deepspeed, steps=args.warmup_steps + 2,
        no_activation_checkpointing=False, lr=1e-4, window=args.window,
        sparsity_target=args.sparsity_target, seq_len=args.seq_len,
        sequence_parallel=args.sequence_parallel, docs_per_row=args.docs_per_row,
        skip_steps=0, profile=False, override=list(args.override) + _overrides(args))


def build_config(args, variant: str, targs: SimpleNamespace | None = None):
    """The trainer config of `variant` as bench.train_throughput builds it, for this
    benchmark's sequence length (the sequence-parallel checks divide it)."""
    from bench.train_throughput import _config

    return _config(targs or _throughput_args(args), variant, args.seq_len)


def _loader(args, cfg, rank: int):
    from bench.train_throughput import synthetic_loader

    return synthetic_loader(cfg, args.seq_len, rank, args.sequence_parallel, args.docs_per_row)


def measure_gpu(args, variant: str) -> dict:
    import contextlib

    import torch.distributed as dist

    from train.trainer import Trainer

    run_dir = Path(args.work_dir) / variant
    cfg, overrides = build_config(args, variant)
    rank = int(os.environ.get("RANK", "0"))
    loader = _loader(args, cfg, rank)
    def attn():
        # A new context per use: sdpa_kernel's is a generator and cannot be entered twice.
        if variant != "dense":
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                            SDPBackend.EFFICIENT_ATTENTION], set_priority=True)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(cfg, run_dir, overrides, loader=loader)
    result: dict = {"variant": variant, "overrides": overrides}
    try:
        with attn():
            for _ in range(args.warmup_steps):
                trainer.train_step([next(loader)])
            torch.cuda.synchronize()
            result["static_bytes"] = engine_static_bytes(trainer.engine)
            # The peaks come from steps without the allocation trace. The trace is taken in
            # one more normal step, last (a failure there loses nothing else), with
            # checkpoint early stopping off: with Python stacks recorded, the exception that
            # stops a recomputation early, raised inside the tiled MLP's autograd Function,
            # came out as "SystemError: ... returned NULL without setting an exception" on
            # an H200 (torch 2.11). Without early stop a recomputation runs the whole layer,
            # so the traced step's replayed peak may differ slightly from the untraced one.
            steps = [("normal", False, False)]
            if variant == "l2a":
                steps.append(("dense_path", True, False))
            if args.record:
                steps.append(("normal_traced", False, True))
            for name, dense, record in steps:
                trainer.draw_dense = lambda step, _d=dense: _d
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                start = torch.cuda.memory_allocated()
                early_stop = contextlib.nullcontext()
                if record:
                    from torch.utils.checkpoint import set_checkpoint_early_stop

                    early_stop = set_checkpoint_early_stop(False)
                    torch.cuda.memory._record_memory_history(max_entries=args.trace_entries,
                                                             stacks="python")
                t0 = time.perf_counter()
                try:
                    with early_stop:
                        trainer.train_step([next(loader)])
                    torch.cuda.synchronize()
                except Exception as e:  # noqa: BLE001  (only the traced step may fail here)
                    if not record:
                        raise
                    torch.cuda.memory._record_memory_history(enabled=None)
                    result[name] = {"error": f"{type(e).__name__}: {e}"[:400]}
                    print(f"{variant} {name} step failed: {result[name]['error']}", flush=True)
                    break
                step_s = time.perf_counter() - t0
                peak = torch.tensor([float(torch.cuda.max_memory_allocated())], device="cuda")
                if dist.is_initialized():
                    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
                entry = {"peak_bytes_max_over_ranks": int(peak.item()),
                         "peak_bytes_this_rank": torch.cuda.max_memory_allocated(),
                         "allocated_at_step_start_bytes": start, "step_s": round(step_s, 3)}
                if record:
                    snap = torch.cuda.memory._snapshot()
                    torch.cuda.memory._record_memory_history(enabled=None)
                    entry["checkpoint_early_stop"] = False
                    entry["at_peak"] = peak_allocations(snap, torch.cuda.current_device(), start)
                    if args.save_snapshot and rank == 0:
                        import pickle

                        snap_path = _out_path(args, suffix=f"-{variant}.pickle")
                        snap_path.parent.mkdir(parents=True, exist_ok=True)
                        snap_path.write_bytes(pickle.dumps(snap))
                        entry["snapshot"] = str(snap_path)
                    del snap
                result[name] = entry
                if rank == 0:
                    print(f"{variant} {name} step: peak {entry['peak_bytes_max_over_ranks'] / 2**30:.2f}"
                          f" GiB (max over ranks), {step_s:.1f} s", flush=True)
    finally:
        trainer.close()
        del trainer
        torch.cuda.empty_cache()
    with attn():
        result["layer_saved"] = layer_saved_bytes(
            variant, cfg.model.random_base, args.layer_tokens, torch.device("cuda"),
            torch.bfloat16, args.tiled_mlp, args.window)
    result["summary_gib"] = summarise(result)
    return result


def summarise(result: dict) -> dict:
    """Peak and its parts in GiB; activations = peak - params - grads - master - states."""
    s = result["static_bytes"]
    static = s["params"] + s["grads"] + s["master_weights"] + s["optimizer_states"]
    out = {k: round(v / 2**30, 2) for k, v in s.items()}
    for name in ("normal", "dense_path"):
        if name in result:
            peak = result[name]["peak_bytes_this_rank"]
            out[f"peak_{name}"] = round(peak / 2**30, 2)
            out[f"activations_{name}"] = round((peak - static) / 2**30, 2)
            # What bench.train_throughput reports: the peak above what is allocated
            # between steps (everything resident, whatever the accounting above names).
            above = peak - result[name]["allocated_at_step_start_bytes"]
            out[f"above_resident_{name}"] = round(above / 2**30, 2)
    return out


def measure_cpu(args, variant: str) -> dict:
    """The degenerate form: a tiny model, fp32, one process on the CPU; the engine's static
    accounting and the per-layer saved tensors (no allocator peak on the CPU)."""
    from train.trainer import Trainer

    run_dir = Path(args.work_dir) / variant
    targs = _throughput_args(args)
    # Built in memory (nothing cached on disk); small ZeRO buckets (CPU RAM, not GPU).
    targs.override += ["model.cache=false", "deepspeed.reduce_bucket_size=100000",
                       "deepspeed.allgather_bucket_size=100000"]
    cfg, overrides = build_config(args, variant, targs)
    cfg.train.precision = "fp32"
    cfg.train.dist_backend = "gloo"
    loader = _loader(args, cfg, 0)
    trainer = Trainer(cfg, run_dir, overrides, loader=loader)
    try:
        trainer.train_step([next(loader)])  # the optimizer creates its moments on the first step
        static = engine_static_bytes(trainer.engine)
        n_trainable, n_params = trainer.n_trainable, trainer.n_params
        mc = trainer.model_config
        shape = {"hidden": mc.hidden_size, "layers": mc.num_hidden_layers,
                 "heads": mc.num_attention_heads, "kv_heads": mc.num_key_value_heads,
                 "head_dim": mc.head_dim, "intermediate": mc.intermediate_size,
                 "vocab": mc.vocab_size, "tied": bool(mc.tie_word_embeddings)}
    finally:
        trainer.close()
    # bf16, as in training (the fp32 upcasts the memory model counts are no-ops in fp32).
    layer = layer_saved_bytes(variant, cfg.model.random_base, args.layer_tokens,
                              torch.device("cpu"), torch.bfloat16, args.tiled_mlp, args.window)
    return {"variant": variant, "overrides": overrides, "static_bytes": static, "shape": shape,
            "world_size": 1, "trainable_params": n_trainable, "total_params": n_params,
            "layer_saved": layer}


def measure_layer_only(args, variant: str) -> dict:
    """`--layer-only`: the tensors one decoder layer of the model's shape saves for backward
    (no trainer, no DeepSpeed: F.linear as torch has it unless a ZeRO-3 engine ran before)."""
    cfg, _ = build_config(args, variant)
    on_gpu = torch.cuda.is_available() and not args.cpu
    layer = layer_saved_bytes(variant, cfg.model.random_base, args.layer_tokens,
                              torch.device("cuda" if on_gpu else "cpu"), torch.bfloat16,
                              args.tiled_mlp, args.window)
    rb = cfg.model.random_base
    h = rb["hidden_size"]
    layer["per_token_in_stream_copies"] = round(layer["per_token"] / (2 * h), 2)
    from train.plan.memory_model import Shape, layer_saved_bytes_per_token

    shape = Shape(hidden=h, layers=rb["num_hidden_layers"], heads=rb["num_attention_heads"],
                  kv_heads=rb["num_key_value_heads"], head_dim=rb["head_dim"],
                  intermediate=rb["intermediate_size"], vocab=rb["vocab_size"] or 0, tied=True)
    shards = 1 if args.tiled_mlp == "off" else 2
    layer["model_per_token"] = layer_saved_bytes_per_token(
        shape, variant, shards, zero3_linear=layer["zero3_linear"])
    return {"variant": variant, "layer_saved": layer}


def _out_path(args, suffix: str = ".json") -> Path:
    if args.out and suffix == ".json":
        return Path(args.out)
    base = results_dir()
    gpu = (torch.cuda.get_device_name(0).replace("NVIDIA ", "").replace(" ", "-")
           if torch.cuda.is_available() and not args.cpu else "cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    name = (f"memory-breakdown-{gpu}-x{world}-{args.model}-{args.seq_len // 1024}k"
            f"-sp{args.sequence_parallel}-{args.deepspeed}{suffix}")
    return base / name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="l2a,dense")
    p.add_argument("--model", default=None, help="conf/model option (default: qwen3_8b_random "
                   "on GPU if present, else qwen3_1p7b_random; tiny with --cpu)")
    p.add_argument("--deepspeed", default="zero3")
    p.add_argument("--seq-len", type=int, default=None, help="default 131072 (GPU), 64 (--cpu)")
    p.add_argument("--sequence-parallel", type=int, default=1)
    p.add_argument("--tiled-mlp", default="off", help="train.tiled_mlp: off | auto | N")
    p.add_argument("--offload-checkpoints", action="store_true")
    p.add_argument("--sparsity-target", type=float, default=0.8)
    p.add_argument("--window", type=int, default=4095)
    p.add_argument("--docs-per-row", type=int, default=1)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--layer-tokens", type=int, default=4096,
                   help="tokens of the one-layer saved-tensor count (64 with --cpu)")
    p.add_argument("--no-record", dest="record", action="store_false",
                   help="no allocation trace (peak numbers only)")
    p.add_argument("--trace-entries", type=int, default=3_000_000)
    p.add_argument("--save-snapshot", action="store_true",
                   help="also write the raw snapshot (for pytorch.org/memory_viz)")
    p.add_argument("--override", action="append", default=[], help="extra Hydra override")
    p.add_argument("--cpu", action="store_true", help="the degenerate CPU form (see above)")
    p.add_argument("--layer-only", action="store_true",
                   help="only one layer's saved tensors at the model's width (CPU or GPU)")
    p.add_argument("--work-dir", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.layer_only:
        args.model = args.model or "qwen3_1p7b_random"
        args.seq_len = args.seq_len or args.layer_tokens
        args.record = False
        results = {v.strip(): measure_layer_only(args, v.strip())
                   for v in args.variants.split(",") if v.strip()}
        print(json.dumps({v: {k: r["layer_saved"][k] for k in
                              ("per_token", "per_token_in_stream_copies", "model_per_token")}
                          for v, r in results.items()}, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        return 0
    if args.cpu:
        args.model = args.model or "tiny"
        args.seq_len = args.seq_len or 64
        args.layer_tokens = min(args.layer_tokens, 64)
        args.window = min(args.window, 16)
        args.record = False
    else:
        if not torch.cuda.is_available():
            print("bench.memory_breakdown: no CUDA GPU (use --cpu for the CPU form)", file=sys.stderr)
            return 1
        default = "qwen3_8b_random" if (ROOT / "conf/model/qwen3_8b_random.yaml").exists() \
            else "qwen3_1p7b_random"
        args.model = args.model or default
        args.seq_len = args.seq_len or 131072
        # NVLink multicast off unless the environment says otherwise (bench.train_throughput).
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
        os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    from train.distributed import broadcast_object, init_distributed

    init_distributed("gloo" if args.cpu else "auto")
    args.work_dir = broadcast_object(args.work_dir or tempfile.mkdtemp(prefix="l2a-mem-"))
    results = {}
    shape = _shape_of(build_config(args, "dense")[0])
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        results[variant] = (measure_cpu if args.cpu else measure_gpu)(args, variant)
        if int(os.environ.get("RANK", "0")) == 0:
            # After every variant: a call stopped in the next one keeps this one.
            out = write_report(args, results, shape)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(json.dumps({v: r.get("summary_gib", r.get("static_bytes")) for v, r in results.items()},
                     indent=2))
    print(f"wrote {out}")
    return 0


def write_report(args, results: dict, shape: dict) -> Path:
    report = {
        "benchmark": "memory_breakdown",
        "device": "cpu" if args.cpu else torch.cuda.get_device_name(0),
        "num_gpus": 0 if args.cpu else int(os.environ.get("WORLD_SIZE", "1")),
        "model": args.model,
        "shape": shape,
        "seq_len": args.seq_len,
        "sequence_parallel": args.sequence_parallel,
        "deepspeed": args.deepspeed,
        "precision": "fp32" if args.cpu else "bf16",
        "activation_checkpointing": True,
        "tiled_mlp": args.tiled_mlp,
        "offload_checkpoints": args.offload_checkpoints,
        "warmup_steps": args.warmup_steps,
        "torch": torch.__version__,
        "results": results,
    }
    out = _out_path(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
