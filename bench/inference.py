"""Inference benchmark: time to first token, decode speed, KV cache bytes and peak memory of
the dense base model, its L2A model and the L2A model with half of its global branches
pruned (local-only layers).

    python -m bench.inference                       # Qwen3-8B shape, 32K/64K/128K, one GPU
    python -m bench.inference --lengths 131072 --batches 1 8 --decode-modes eager graph
    python -m bench.inference --tiny                # tiny shape on CPU: a smoke run
    python -m bench.inference --lengths 131072 --decode-steps 4 --variants dense l2a \
        --profile-prefill 131072                    # 128K prefill: both projection modes

Models have random weights (bf16, built on the GPU directly). The L2A routers are biased
to a stated routed fraction (``--routed``): each layer's routing threshold is set, in one
calibration pass of ``--calib-len`` tokens, to the quantile of its router logits that routes
that fraction; the timed runs record the fraction actually routed. Batch 1, one document.

- dense: the base model through HF's SDPA path, prefill with cuDNN first (K/V expanded to
  the query heads so that cuDNN takes it; flash, then memory-efficient as fallbacks),
  decoding with HF's default SDPA call (native GQA), and through
  FlashAttention-4 (``flash_attention_4``) where ``flash_attn.cute`` is installed.
- l2a: the converted model (window ``--window``), Triton kernels for prefill, the global
  branch's q/o projections for every token; decoding steps skip the global branch of
  layers that route nothing.
- l2a_routed_proj: the same model with ``l2a_routed_projections`` on: in the prefill the
  global branch's q_proj / QK-norm / RoPE / o_proj run for routed tokens only (k/v for
  every token, they go in the cache). ``--projections`` picks which of these run;
  ``routed_fused`` (``l2a_routed_proj_fused``) adds ``l2a_fused_elementwise`` (the
  elementwise work around the branches torch.compile'd; its compilation falls in the
  warm-up).
- l2a_pruned: the same model with the global branch kept in half of the layers (the most
  used ones on the calibration pass, ``l2a.prune``), in the last ``--projections`` mode.

Every variant records the options it ran with (``options``) and its warm-up (``warm_up``:
prefills of several lengths until one compiles no torch.compile graph; per warm-up its
length, seconds and graphs compiled); every timed run the graphs compiled during it
(``compiles``, 0 when the warm-up covered every shape). ``--profile-prefill LENGTH``
adds, per variant, a ``torch.profiler`` run of one prefill of that length (after one
unprofiled prefill, unless LENGTH was just timed): GPU kernel time per category and the
25 longest kernels (``bench/prefill_profile.py``).

TTFT = one prefill forward of the prompt with ``logits_to_keep=1`` (batch 1,
CUDA-synchronised wall time, the cache built inside it), on caches of the same growing
buffers (``l2a.cache``), so no variant pays a ``torch.cat`` of its whole cache per token.

Decoding (``decode`` of every run; bench/decode_timing.py): per ``--decode-modes`` and
``--batches`` (a batch that runs out of memory is halved until one fits),
``--decode-warmup`` untimed then ``--decode-steps`` timed greedy steps, each to a
synchronised device; ms per token is their median. ``eager``: the growing caches, a Python
forward per step. ``graph``: static caches and a CUDA-graph replay per step (the L2A models:
``l2a.static_cache`` / ``l2a.decode_graph``; the dense base: transformers' StaticCache,
captured the same way, its decoding attention on the L2A models' split-KV kernels when it
runs on SDPA: ``decode_attention`` of the row, bench/dense_decode_attention.py), both
models in the same mode. Each row has the bytes a step must
read (the weights, the embedding only for the rows looked up; dense: every cached key and
value; L2A: the local windows and the global cache only of the rows whose token routed),
the implied GB/s and the memory-bound floor: those bytes at the device's copy bandwidth,
measured at the start of the run (``copy_gb_per_s``). The summary compares each L2A
prefill with the fastest dense prefill and each L2A decoding with the fastest dense
decoding of the same mode and batch. ``fallbacks``: every attention backend that failed
and was replaced in this process (kernels/fallbacks.py): numbers of a run with one are not
those of the backend the options name. Results go to ``--out``, else
``<gpu>-inference-<date>.json`` in ``$L2A_RESULTS_DIR`` (if set) or ``bench/results/``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.decode_timing import (
    DECODE_MODES,
    StaticGraphStep,
    copy_bandwidth,
    static_dense_cache,
    summarise,
    time_steps,
)
from bench.results_dir import results_dir

ROOT = Path(__file__).resolve().parent.parent



def qwen3_8b_shape() -> dict:
    """Qwen3-8B's shape from the `model=qwen3_8b_random` preset (one definition for every
    benchmark), with the preset's rope theta in transformers' `rope_parameters` form."""
    from omegaconf import OmegaConf

    m = OmegaConf.load(ROOT / "conf" / "model" / "qwen3_8b_random.yaml")
    shape = OmegaConf.to_container(m.random_base)
    shape["rope_parameters"] = {"rope_type": "default", "rope_theta": float(m.rope_theta)}
    return shape


TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=512,
    tie_word_embeddings=False,
    rms_norm_eps=1e-6,
    max_position_embeddings=4096,
    rope_parameters={"rope_type": "default", "rope_theta": 5e6},
)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def build_base(shape: dict, device, dtype, seed: int = 0):
    """The dense base with random weights, created on ``device`` in ``dtype`` directly."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(**shape, attn_implementation="sdpa")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen3ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


@torch.no_grad()
def calibrate_routers(model, fraction: float, length: int, device, seed: int = 0) -> None:
    """Random router weights, then per layer (in order, in one pass) the routing threshold
    at the quantile of its logits that routes ``fraction`` of the tokens."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    attns = [
        layer.self_attn
        for layer in model.model.layers
        if getattr(layer.self_attn, "has_global", False)
    ]
    for attn in attns:
        w = (
            torch.randn(attn.router.weight.shape, generator=gen)
            / attn.router.weight.shape[1] ** 0.5
        )
        attn.router.weight.copy_(w.to(attn.router.weight))

        def calibrating(g, attn=attn):
            logit = torch.nn.functional.linear(g.float(), attn.router.weight.float()).squeeze(-1)
            attn.logit_threshold = float(torch.quantile(logit.flatten().float(), 1.0 - fraction))
            del attn.route  # back to the class method
            return attn.route(g)

        attn.route = calibrating
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=gen).to(device)
    model(ids, use_cache=False, logits_to_keep=1)


# --projections: the L2A variant each mode runs as.
L2A_MODES = {"full": "l2a", "routed": "l2a_routed_proj", "routed_fused": "l2a_routed_proj_fused"}


def _dense_cache(model):
    from l2a.cache import DenseCache

    return DenseCache(model.config.num_hidden_layers)


def _l2a_cache(model):
    from l2a.cache import L2ACache

    return L2ACache(model.config)


def _eager_step(model, cache):
    def step(nxt, pos):
        out = model(nxt, position_ids=pos, past_key_values=cache, use_cache=True)
        return out.logits, getattr(out, "routes", None)

    return step


@torch.no_grad()
def measure(
    model, make_cache, length: int, decode_steps: int, device, prefill_context=None, seed: int = 0,
    decode_warmup: int = 0,
) -> dict:
    """TTFT of a ``length``-token prompt, then ``decode_warmup`` untimed and
    ``decode_steps`` timed greedy decoding steps (eager, the growing cache; median per
    step); ``prefill_context`` (a context-manager factory) wraps the prefill only."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=gen).to(device)
    _free(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base_mem = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    cache = make_cache(model)
    _sync(device)
    t0 = time.perf_counter()
    with prefill_context() if prefill_context else _nullcontext():
        out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    _sync(device)
    ttft = time.perf_counter() - t0
    routes = getattr(out, "routes", None)
    routed = float(torch.stack([r.float().mean() for r in routes]).mean()) if routes else None
    kv_prefill = cache.kv_bytes()
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    del out
    pos = torch.full((1, 1), length, dtype=torch.long, device=device)
    times, step_routes = time_steps(_eager_step(model, cache), nxt, pos, decode_warmup, decode_steps, device)
    med = statistics.median(times) if times else None
    result = {
        "length": length,
        "ttft_s": round(ttft, 4),
        "prefill_tokens_per_s": round(length / ttft, 1),
        "decode_steps": decode_steps,
        "decode_tokens_per_s": round(1 / med, 2) if med else None,
        "decode_ms_per_token": round(1000 * med, 3) if med else None,
        "kv_bytes_after_prefill": kv_prefill,
        "kv_bytes": cache.kv_bytes(),
        "kv_allocated_bytes": cache.allocated_bytes(),
        "routed_fraction_prefill": routed,
        "routed_fraction_decode": float(torch.stack(step_routes).mean()) if step_routes else None,
    }
    if device.type == "cuda":
        result["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
        result["peak_memory_above_weights_bytes"] = result["peak_memory_bytes"] - base_mem
    del cache
    _free(device)
    return result


def _cache_bytes(cache) -> tuple[int, int]:
    """(content, allocated) bytes of an L2A / dense cache of l2a.cache, or of transformers'
    StaticCache (its buffers: content and allocation are one)."""
    if hasattr(cache, "kv_bytes"):
        return cache.kv_bytes(), cache.allocated_bytes()
    from l2a.cache import storage_bytes

    n = sum(storage_bytes(layer.keys, layer.values) for layer in cache.layers if layer.is_initialized)
    return n, n


@torch.no_grad()
def measure_decode(model, make_cache, length: int, mode: str, batch: int, args, device,
                   copy_gbps: float, seed: int = 0) -> dict:
    """Decoding of a batch of ``batch`` ``length``-token prompts in ``mode`` (eager: the
    growing cache; graph: a static cache and CUDA-graph steps, bench/decode_timing.py):
    ``--decode-warmup`` untimed steps, then ``--decode-steps`` timed ones."""
    from l2a.decode_graph import GraphedDecoder
    from l2a.static_cache import L2AStaticCache

    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=gen).to(device)
    total = length + args.decode_warmup + args.decode_steps
    dense = not hasattr(model.config, "l2a_window")
    capture = device.type == "cuda"
    scope = contextlib.ExitStack()
    decode_attention = None
    _free(device)
    if mode == "eager":
        cache = make_cache(model)
        out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        step = _eager_step(model, cache)
    elif dense:
        grown = make_cache(model)
        out = model(ids, past_key_values=grown, use_cache=True, logits_to_keep=1)
        cache = static_dense_cache(model, grown, total)
        del grown
        if model.config._attn_implementation == "sdpa":
            # The static cache's masked SDPA has no split over keys: decode on the L2A
            # models' split-KV kernels (bench/dense_decode_attention.py), same mode, same kernel.
            from bench.dense_decode_attention import use_split_decode

            decode_attention = "split_kv"
            scope.enter_context(use_split_decode(model))
        step = StaticGraphStep(model, cache, capture).step
    else:
        cache = L2AStaticCache(model.config, max_cache_len=total)
        out = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        step = GraphedDecoder(model, cache, capture).step
    nxt = out.logits[:, -1:].argmax(-1)
    del out
    pos = torch.full((batch, 1), length, dtype=torch.long, device=device)
    with scope:
        times, routes = time_steps(step, nxt, pos, args.decode_warmup, args.decode_steps, device)
    itemsize = next(model.parameters()).element_size()
    context = length + args.decode_warmup + args.decode_steps // 2  # the median step's
    row = {"mode": mode, "requested_batch": batch}
    if decode_attention == "split_kv":
        row["decode_attention"] = decode_attention
    row.update(summarise(times, routes, model, context, batch, copy_gbps, itemsize))
    row["kv_bytes"], row["kv_allocated_bytes"] = _cache_bytes(cache)
    del cache, step
    _free(device)
    return row


def decode_rows(model, make_cache, length: int, args, device, copy_gbps: float) -> list[dict]:
    """Every ``--decode-modes`` x ``--batches`` row at ``length``; a batch that runs out of
    memory is retried at half the size (down to 1), so the largest that fits is timed."""
    rows = []
    for mode in args.decode_modes:
        for requested in args.batches:
            batch = requested
            while True:
                try:
                    row = measure_decode(model, make_cache, length, mode, batch, args, device, copy_gbps)
                    row["requested_batch"] = requested
                    break
                except torch.cuda.OutOfMemoryError as err:
                    _free(device)
                    if batch == 1:
                        row = {"mode": mode, "requested_batch": requested,
                               "error": f"out of memory: {str(err).splitlines()[0]}"}
                        break
                    batch //= 2
            rows.append(row)
    return rows


def compile_count() -> int:
    """Graphs torch.compile has compiled in this process so far (Dynamo's counter; a
    recompilation counts as one more)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


# Warm-up prefills at most; they stop at the first one after the first that compiles nothing.
WARM_UP_MAX = 4


def warm_up(model, make_cache, lengths, args, device, context=None) -> list[dict]:
    """Prefills (and two decoding steps each) until one compiles nothing, so that no timed
    run pays a compilation: the first at ``--calib-len`` tokens (kernel compilation), then
    other lengths and prompts, hence other routed counts per layer (new shapes for the
    compiled regions of the fused variant: a compile there would show). Returns per
    warm-up its length, prefill seconds and the graphs it compiled."""
    from kernels.decode import DECODE_MAX_QUERIES

    first = min(args.calib_len, min(lengths))
    # Other lengths than the first and than each other, still prefills (> a decoding step).
    sizes = [first] + [max(first // (i + 1) + 2 * i + 1, DECODE_MAX_QUERIES + i + 1)
                       for i in range(1, WARM_UP_MAX)]
    rows = []
    for i, length in enumerate(sizes):
        before = compile_count()
        row = measure(model, make_cache, length, 2, device, context, seed=1000 + i)
        rows.append({"length": length, "ttft_s": row["ttft_s"], "compiles": compile_count() - before})
        if i > 0 and rows[-1]["compiles"] == 0:
            break
    return rows


def run_variant(
    name: str, model, make_cache, lengths, args, device, context=None, options=None
) -> dict:
    """Warm-up (``warm_up``: compilation), then every length; an OOM is recorded and the
    next length still runs. Then the prefill profile if ``--profile-prefill``. Each timed
    run records the graphs compiled during it (``compiles``: 0 unless the warm-up missed a
    shape)."""
    print(f"[{name}] warm-up", flush=True)
    try:
        warm = warm_up(model, make_cache, lengths, args, device, context)
    except RuntimeError as err:  # e.g. a compile failure (fused variant): record, go on
        print(f"[{name}] warm-up failed: {err}", flush=True)
        _free(device)
        return {"options": options or {}, "error": f"warm-up: {str(err).splitlines()[0]}"}
    print(f"[{name}] warm-up {json.dumps(warm)}", flush=True)
    rows = []
    for length in lengths:
        before = compile_count()
        try:
            row = measure(model, make_cache, length, args.decode_steps, device, context,
                          decode_warmup=args.decode_warmup)
            row["compiles"] = compile_count() - before
            row["decode"] = decode_rows(model, make_cache, length, args, device, args.copy_gbps)
        except torch.cuda.OutOfMemoryError as err:
            row = {"length": length, "error": f"out of memory: {str(err).splitlines()[0]}"}
            _free(device)
        except RuntimeError as err:  # e.g. no SDPA backend for a shape: record, go on
            row = {"length": length, "error": str(err).splitlines()[0]}
            _free(device)
        print(f"[{name}] {json.dumps(row)}", flush=True)
        rows.append(row)
    result = {"options": options or {}, "warm_up": warm, "runs": rows}
    if args.profile_prefill:
        from bench.prefill_profile import profile_prefill

        length = args.profile_prefill
        just_ran = bool(rows) and rows[-1]["length"] == length and "error" not in rows[-1]
        try:
            prof = profile_prefill(model, make_cache, length, device, context, warm=not just_ran)
        except torch.cuda.OutOfMemoryError as err:
            prof = {"length": length, "error": f"out of memory: {str(err).splitlines()[0]}"}
        _free(device)
        print(f"[{name}] profile {json.dumps({k: prof.get(k) for k in ('kernel_ms', 'error')})}",
              flush=True)
        result["profile"] = prof
    return result


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _sdpa_cudnn_first():
    """Prefill: SDPA with cuDNN first (flash, then memory-efficient, as fallbacks), K/V
    expanded to the query heads (HF passes ``enable_gqa`` otherwise, which cuDNN may not
    take). Decoding steps keep HF's default SDPA call (native GQA: expanding the whole
    cache at every step would penalise the dense model)."""
    import transformers.integrations.sdpa_attention as hf_sdpa
    from torch.nn.attention import SDPBackend, sdpa_kernel

    class Ctx:
        def __enter__(self):
            self.saved = hf_sdpa.use_gqa_in_sdpa
            hf_sdpa.use_gqa_in_sdpa = lambda *a, **k: False
            self.kernel = sdpa_kernel(
                [
                    SDPBackend.CUDNN_ATTENTION,
                    SDPBackend.FLASH_ATTENTION,
                    SDPBackend.EFFICIENT_ATTENTION,
                ],
                set_priority=True,
            )
            self.kernel.__enter__()

        def __exit__(self, *exc):
            self.kernel.__exit__(*exc)
            hf_sdpa.use_gqa_in_sdpa = self.saved
            return False

    return Ctx()


def _fa4_available() -> bool:
    try:
        from transformers.utils.import_utils import is_flash_attn_4_available

        return bool(is_flash_attn_4_available())
    except ImportError:
        return False


def environment(device) -> dict:
    import transformers
    import triton

    env = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "flash_attn_4": _fa4_available(),
    }
    if device.type == "cuda":
        from kernels.flash.config import GPU_CONFIGS

        env["kernel_configs"] = {f"{p}/{d}": vars(c) for (p, d), c in GPU_CONFIGS.items()}
    return env


def _summary(results: dict, longest: int) -> dict:
    """At the longest length: each L2A variant's prefill against the fastest dense prefill,
    and its decoding against the fastest dense decoding of the same mode and batch (each
    measured in this run); KV bytes against the dense cache."""

    def row_at(variant):
        for row in results.get(variant, {}).get("runs", []):
            if row["length"] == longest and "error" not in row:
                return row
        return None

    def at(variant, key):
        row = row_at(variant)
        return row.get(key) if row else None

    def decode_ms(variant, mode, batch):
        for d in (row_at(variant) or {}).get("decode", []):
            if d["mode"] == mode and d["requested_batch"] == batch and "ms_per_token" in d:
                return d["ms_per_token"]
        return None

    out = {"length": longest}
    dense = [v for v in results if v.startswith("dense") and at(v, "ttft_s")]
    l2a = [v for v in results if v.startswith("l2a")]
    if dense:
        fastest = min(dense, key=lambda v: at(v, "ttft_s"))
        out["fastest_dense_prefill"] = fastest
        for v in l2a:
            if at(v, "ttft_s"):
                out[f"{v}_prefill_speedup_vs_fastest_dense"] = round(at(fastest, "ttft_s") / at(v, "ttft_s"), 3)
        keys = {(d["mode"], d["requested_batch"]) for v in dense for d in row_at(v).get("decode", [])}
        for mode, batch in sorted(keys):
            timed = [v for v in dense if decode_ms(v, mode, batch)]
            if not timed:
                continue
            best = min(timed, key=lambda v: decode_ms(v, mode, batch))
            out[f"fastest_dense_decode_{mode}_b{batch}"] = best
            for v in l2a:
                if decode_ms(v, mode, batch):
                    out[f"{v}_decode_{mode}_b{batch}_speedup_vs_fastest_dense"] = round(
                        decode_ms(best, mode, batch) / decode_ms(v, mode, batch), 3
                    )
    for v in l2a:
        if at(v, "kv_bytes_after_prefill") and at("dense_sdpa", "kv_bytes_after_prefill"):
            out[f"{v}_kv_ratio_vs_dense"] = round(
                at(v, "kv_bytes_after_prefill") / at("dense_sdpa", "kv_bytes_after_prefill"), 4
            )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.inference", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--lengths", type=int, nargs="+", default=[32768, 65536, 131072])
    ap.add_argument("--decode-steps", type=int, default=32,
                    help="timed decoding steps per run (the median is reported)")
    ap.add_argument("--decode-warmup", type=int, default=4, help="untimed decoding steps first")
    ap.add_argument("--decode-modes", nargs="+", default=list(DECODE_MODES),
                    help="eager (growing caches) and/or graph (static caches, CUDA graphs)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8],
                    help="decoding batch sizes (one that runs out of memory is halved)")
    ap.add_argument(
        "--routed", type=float, default=0.2, help="fraction of tokens the routers send to global"
    )
    ap.add_argument("--window", type=int, default=4095)
    ap.add_argument("--calib-len", type=int, default=4096)
    ap.add_argument("--variants", nargs="+", default=["dense", "l2a", "l2a_pruned"])
    ap.add_argument(
        "--projections",
        nargs="+",
        default=["full", "routed"],
        help="L2A variants to time: full (global q/o projections for every token), routed "
        "(for routed tokens only, l2a_routed_projections), routed_fused (routed and "
        "l2a_fused_elementwise)",
    )
    ap.add_argument(
        "--profile-prefill",
        type=int,
        default=None,
        metavar="LENGTH",
        help="per variant, profile one prefill of LENGTH tokens (kernel time by category)",
    )
    ap.add_argument(
        "--tiny", action="store_true", help="tiny shape, short lengths (a CPU smoke run)"
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not 0.0 < args.routed <= 1.0:
        print(
            f"bench.inference: error: --routed: must be in (0, 1], got {args.routed}",
            file=sys.stderr,
        )
        return 2
    bad = sorted(set(args.variants) - {"dense", "l2a", "l2a_pruned"})
    if bad:
        print(f"bench.inference: error: --variants: unknown {bad}", file=sys.stderr)
        return 2
    bad = sorted(set(args.projections) - set(L2A_MODES))
    if bad:
        print(
            f"bench.inference: error: --projections: expected some of {list(L2A_MODES)}, "
            f"got {bad}",
            file=sys.stderr,
        )
        return 2
    bad = sorted(set(args.decode_modes) - set(DECODE_MODES))
    if bad:
        print(f"bench.inference: error: --decode-modes: expected some of {list(DECODE_MODES)}, "
              f"got {bad}", file=sys.stderr)
        return 2
    if min(args.batches) < 1 or args.decode_steps < 1 or args.decode_warmup < 0:
        print("bench.inference: error: --batches and --decode-steps must be >= 1, "
              "--decode-warmup >= 0", file=sys.stderr)
        return 2
    if args.profile_prefill is not None and args.profile_prefill < 1:
        print(
            "bench.inference: error: --profile-prefill: must be a positive token count, "
            f"got {args.profile_prefill}",
            file=sys.stderr,
        )
        return 2
    import l2a  # noqa: F401
    from kernels.fallbacks import fallbacks
    from l2a.convert import convert_model
    from l2a.prune import measure_global_usage, prune_global_branches, select_global_layers

    shape = dict(TINY) if args.tiny else qwen3_8b_shape()
    if args.tiny:
        args.lengths = [n for n in args.lengths if n <= 512] or [96, 160]
        if args.profile_prefill:
            args.profile_prefill = min(args.profile_prefill, 512)
        args.window, args.calib_len = min(args.window, 32), min(args.calib_len, 64)
        args.decode_steps = min(args.decode_steps, 4)
        args.decode_warmup = min(args.decode_warmup, 1)
        args.batches = [min(b, 2) for b in args.batches]
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    args.copy_gbps = copy_bandwidth(device)
    print(f"bench.inference: device copy bandwidth {args.copy_gbps:.1f} GB/s", flush=True)
    print(f"bench.inference: building the base model on {device} ({dtype})", flush=True)
    base = build_base(shape, device, dtype)
    results = {}
    report = {
        "benchmark": "bench.inference",
        "env": environment(device),
        "shape": "tiny" if args.tiny else "Qwen3-8B",
        "model_shape": shape,
        "dtype": str(dtype),
        "batch": 1,  # prefill (TTFT); decoding: --batches, per row of "decode"
        "copy_gb_per_s": round(args.copy_gbps, 2),
        "window": args.window,
        "routed_target": args.routed,
        "calibration_tokens": args.calib_len,
        "pruned_layers": None,
        "options": {
            "variants": args.variants,
            "projections": args.projections,
            "decode_steps": args.decode_steps,
            "decode_warmup": args.decode_warmup,
            "decode_modes": args.decode_modes,
            "batches": args.batches,
            "profile_prefill": args.profile_prefill,
        },
        "results": results,
    }
    if args.out is not None:
        path = args.out
    else:
        gpu = (report["env"]["gpu"] or "cpu").replace(" ", "-")
        path = results_dir() / f"{gpu}-inference-{report['env']['date'][:10]}.json"

    def write():
        """After every variant: a run cut short still leaves what it measured."""
        report["summary"] = _summary(results, max(args.lengths))
        # A backend that fell back (kernels/fallbacks.py) did not produce these numbers.
        report["fallbacks"] = fallbacks()
        report["summary"]["backend_fallbacks"] = len(report["fallbacks"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")

    if "dense" in args.variants:
        ctx = _sdpa_cudnn_first if device.type == "cuda" else None
        results["dense_sdpa"] = run_variant(
            "dense_sdpa", base, _dense_cache, args.lengths, args, device, ctx,
            {"attention": "sdpa, cuDNN first" if ctx else "sdpa"},
        )
        if _fa4_available() and device.type == "cuda":
            try:
                base.set_attn_implementation("flash_attention_4")
                results["dense_fa4"] = run_variant(
                    "dense_fa4", base, _dense_cache, args.lengths, args, device, None,
                    {"attention": "flash_attention_4"},
                )
            except (ImportError, ValueError, RuntimeError) as err:
                results["dense_fa4"] = {"error": str(err).splitlines()[0]}
            base.set_attn_implementation("sdpa")
        write()
    pruned_layers = None
    if "l2a" in args.variants or "l2a_pruned" in args.variants:
        model = convert_model(base, init="paper", window=args.window)
        del base
        _free(device)
        calibrate_routers(model, args.routed, args.calib_len, device)

        def l2a_options(mode: str) -> dict:
            model.l2a_runtime.routed_projections = mode != "full"
            model.l2a_runtime.fused_elementwise = mode == "routed_fused"
            return {
                "routed_projections": model.l2a_runtime.routed_projections,
                "fused_elementwise": model.l2a_runtime.fused_elementwise,
                "attn_backend": model.l2a_runtime.attn_backend,
            }

        if "l2a" in args.variants:
            for mode in args.projections:
                name = L2A_MODES[mode]
                opts = l2a_options(mode)
                results[name] = run_variant(
                    name, model, _l2a_cache, args.lengths, args, device, None, opts
                )
                write()
        if "l2a_pruned" in args.variants:
            gen = torch.Generator().manual_seed(1)
            calib = [
                {
                    "input_ids": torch.randint(
                        0, shape["vocab_size"], (1, args.calib_len), generator=gen
                    ).to(device)
                }
            ]
            usage = measure_global_usage(model, calib)
            keep = select_global_layers(usage, sorted(usage), keep_fraction=0.5)
            prune_global_branches(model, keep)
            pruned_layers = sorted(set(usage) - set(keep))
            # In the last --projections mode (routed projections by default).
            opts = l2a_options(args.projections[-1])
            results["l2a_pruned"] = run_variant(
                "l2a_pruned", model, _l2a_cache, args.lengths, args, device, None, opts
            )
    report["pruned_layers"] = pruned_layers
    write()
    print(json.dumps(report["summary"], indent=2))
    print(f"bench.inference: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
