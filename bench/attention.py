"""Attention benchmark: token-sparse global branch and local branch against dense baselines.

    python -m bench.attention                      # full table (Qwen3-8B heads, bf16, B=1)
    python -m bench.attention --lengths 32768 --fractions 0.2 --passes fwd
    python -m bench.attention --sweep              # launch-config variants of our kernels

All kernels of a table run in one process on one GPU, side by side:
  sdpa_flash, sdpa_cudnn   dense causal SDPA; K/V expanded to Hq heads before timing
                           (the expansion is not timed, which favours the baselines);
  flex_token_sparse        FlexAttention on the compacted routed queries, a mask_mod on
                           original positions, block mask built by create_block_mask
                           (compiled); compaction, mask build and scatter-back timed;
  triton_token_sparse      ours (kernels.token_sparse_attention), routing compaction timed;
  local_triton, local_flex the local branch alone (window 4095), ours and FlexAttention;
  flash_attn, local_flash_attn  flash-attn's kernel, dense causal and windowed (native
                           GQA), where the flash-attn package is installed;
  fa4_dense                FlashAttention-4 (flash_attn.cute) dense causal, native GQA;
  flex_flash_token_sparse  flex_token_sparse with FlexAttention's FLASH backend
                           (FlashAttention-4 with the block mask), written the obvious way;
                           `_static`: compiled for the exact shape (128K / 20% only);
  fa4_token_sparse, local_fa4   our ops with backend="fa4" (compacted block mask; the
                           windowed FlashAttention-4 kernel), where flash-attn-4 runs;
  auto_token_sparse, auto_local our ops with backend="auto" (what the model runs here).
Useful TFLOP/s = causal dense FLOPs x routed fraction / time (fwd: 4 T^2/2 D Hq, fwd+bwd
3.5x that); for the local branch, the FLOPs of the window band.
Writes bench/results/<gpu>-<date>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import triton

from kernels.tuning.variants import parse_variant

HQ, HKV, D = 32, 8, 128
WINDOW = 4095


def _time_ms(fn, target_ms: float = 600.0, min_reps: int = 3, max_reps: int = 30) -> float:
    """Median of CUDA-event timings after a warm-up; repetitions sized by a first run."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    est = start.elapsed_time(end)
    reps = int(min(max_reps, max(min_reps, math.ceil(target_ms / max(est, 1e-3)))))
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def causal_flops(T: int, pass_name: str) -> float:
    fwd = 4.0 * (T * T / 2) * D * HQ
    return fwd if pass_name == "fwd" else 3.5 * fwd


def window_flops(T: int, window: int, pass_name: str) -> float:
    band = T * window - window * window / 2 if T > window else T * T / 2
    fwd = 4.0 * band * D * HQ
    return fwd if pass_name == "fwd" else 3.5 * fwd


def make_route(T: int, fraction: float, device) -> torch.Tensor:
    n = max(1, round(fraction * T))
    route = torch.zeros(1, T, dtype=torch.bool, device=device)
    route[0, torch.randperm(T, device=device)[:n]] = True
    return route


def _runner(fn, q, k, v, pass_name):
    if pass_name == "fwd":

        def run():
            with torch.no_grad():
                fn(q, k, v)

        return run
    do = torch.randn_like(q)

    def run():
        for t in (q, k, v):
            t.grad = None
        fn(q, k, v).backward(do)

    return run


def sdpa_dense(backend_name: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[
        backend_name
    ]

    def fn(q, k, v):
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    return fn


def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def flash_attn_dense(window: int | None = None):
    """flash-attn's kernel (when installed): dense causal, or causal with a sliding window
    of `window` keys (the local branch). Native GQA: K/V are not expanded. Its layout is
    (B, T, H, D), so the transposes are part of what is timed, as in a model using it."""
    from flash_attn import flash_attn_func

    win = (-1, -1) if window is None else (window - 1, 0)

    def fn(q, k, v):
        o = flash_attn_func(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True, window_size=win
        )
        return o.transpose(1, 2)

    return fn


def fa4_available() -> bool:
    from kernels.backends import fa4_suits

    return fa4_suits(torch.empty(1, 1, 1, D, device="cuda", dtype=torch.bfloat16))


def fa4_dense():
    """FlashAttention-4 dense causal, layout (B, T, H, D) (the transposes are timed)."""
    from flash_attn.cute import flash_attn_func

    def fn(q, k, v):
        o = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)[0]
        return o.transpose(1, 2)

    return fn


def flex_token_sparse(route: torch.Tensor, dynamic: bool, flash: bool = False):
    """What a PyTorch expert would write with FlexAttention (B = 1).

    dynamic=True: one compile serves every routed count (Q_LEN changes with the fraction);
    dynamic=False: compiled for this exact shape (the headline comparison).
    flash=True: FlexAttention's FLASH backend (FlashAttention-4 kernels)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention, dynamic=dynamic)
    options = {"BACKEND": "FLASH"} if flash else None

    def fn(q, k, v):
        T = q.shape[2]
        pos = route[0].nonzero().squeeze(1).to(torch.int32)  # host sync: flex needs Q_LEN

        def mask_mod(b, h, q_idx, kv_idx):
            return kv_idx <= pos[q_idx]

        mask = create_block_mask(mask_mod, 1, None, pos.numel(), T, device=q.device, _compile=True)
        qc = q[:, :, pos.long()]
        oc = flex(qc, k, v, block_mask=mask, enable_gqa=True, kernel_options=options)
        out = torch.zeros_like(q)
        return out.index_copy(2, pos.long(), oc)

    return fn


def ours_token_sparse(route: torch.Tensor, backend: str = "triton"):
    from kernels import token_sparse_attention

    return lambda q, k, v: token_sparse_attention(q, k, v, route, backend=backend)


def local(impl: str):
    """Our sliding-window op with backend `impl` (triton, flex, fa4, auto)."""
    from kernels import sliding_window_attention

    return lambda q, k, v: sliding_window_attention(q, k, v, WINDOW, None, D**-0.5, backend=impl)


def environment() -> dict:
    from kernels.flash import config as flash_config

    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": props.name,
        "sm_count": props.multi_processor_count,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "heads": {"q": HQ, "kv": HKV, "head_dim": D},
        "dtype": "bfloat16",
        "batch": 1,
        "window": WINDOW,
        # What our kernels ran with (after any L2A_KERNEL_CONFIGS overrides).
        "kernel_configs": {f"{p}/{b}": asdict(c) for (p, b), c in flash_config.GPU_CONFIGS.items()},
    }


def run_table(lengths, fractions, passes, kernels_sel, records: list | None = None) -> list[dict]:
    """Times every selected kernel; each record is appended to `records` (also printed) as
    soon as it is measured, so a caller that is interrupted keeps the finished ones."""
    records = [] if records is None else records
    for T in lengths:
        torch.manual_seed(T)
        q = torch.randn(1, HQ, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(1, HKV, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(1, HKV, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        jobs = []
        if "sdpa" in kernels_sel:
            ke = k.detach().repeat_interleave(HQ // HKV, 1).requires_grad_(True)
            ve = v.detach().repeat_interleave(HQ // HKV, 1).requires_grad_(True)
            for name in ("flash", "cudnn"):
                jobs.append((f"sdpa_{name}", 1.0, sdpa_dense(name), (q, ke, ve), "dense"))
        if "flash_attn" in kernels_sel and flash_attn_available():
            jobs.append(("flash_attn", 1.0, flash_attn_dense(), (q, k, v), "dense"))
        fa4 = "fa4" in kernels_sel and fa4_available()
        if fa4:
            jobs.append(("fa4_dense", 1.0, fa4_dense(), (q, k, v), "dense"))
        for f in fractions:
            route = make_route(T, f, "cuda")
            if "ours" in kernels_sel:
                jobs.append(
                    ("triton_token_sparse", f, ours_token_sparse(route), (q, k, v), "sparse")
                )
            if "auto" in kernels_sel:
                jobs.append(
                    ("auto_token_sparse", f, ours_token_sparse(route, "auto"), (q, k, v), "sparse")
                )
            if fa4:
                jobs.append(
                    ("fa4_token_sparse", f, ours_token_sparse(route, "fa4"), (q, k, v), "sparse")
                )
                jobs.append(
                    (
                        "flex_flash_token_sparse",
                        f,
                        flex_token_sparse(route, True, flash=True),
                        (q, k, v),
                        "sparse",
                    )
                )
                if T == max(lengths) and abs(f - 0.2) < 1e-9:
                    # Compiled for this exact shape: FLASH's dynamic-shape compile of the
                    # obvious mask_mod failed on an H200 (a captured dynamic scalar), and a
                    # static compile is the workaround its error message names.
                    jobs.append(
                        (
                            "flex_flash_token_sparse_static",
                            f,
                            flex_token_sparse(route, False, flash=True),
                            (q, k, v),
                            "sparse",
                        )
                    )
            if "flex" in kernels_sel:
                jobs.append(
                    ("flex_token_sparse", f, flex_token_sparse(route, True), (q, k, v), "sparse")
                )
                if T == max(lengths) and abs(f - 0.2) < 1e-9:
                    jobs.append(
                        (
                            "flex_token_sparse_static",
                            f,
                            flex_token_sparse(route, False),
                            (q, k, v),
                            "sparse",
                        )
                    )
        if "local" in kernels_sel:
            impls = ["triton", "flex"] + (["fa4"] if fa4 else []) + (["auto"] if "auto" in kernels_sel else [])
            # The model's layout: projections give (B, T, H, D) memory seen as (B, H, T, D),
            # which FlashAttention-4 takes without a copy.
            model_layout = tuple(
                t.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(True)
                for t in (q, k, v)
            )
            for impl in impls:
                args = model_layout if impl in ("fa4", "auto") else (q, k, v)
                jobs.append((f"local_{impl}", 1.0, local(impl), args, "window"))
            if "flash_attn" in kernels_sel and flash_attn_available():
                jobs.append(
                    ("local_flash_attn", 1.0, flash_attn_dense(WINDOW), (q, k, v), "window")
                )
        for name, f, fn, (qq, kk, vv), kind in jobs:
            for p in passes:
                ms, errors = time_with_retry(
                    lambda: _time_ms(_runner(fn, qq, kk, vv, p)), f"{name} T={T} f={f} {p}"
                )
                if ms is None:
                    continue
                flops = window_flops(T, WINDOW, p) if kind == "window" else causal_flops(T, p) * f
                rec = {
                    "kernel": name,
                    "seq_len": T,
                    "fraction": f,
                    "pass": p,
                    "ms": round(ms, 3),
                    "useful_tflops": round(flops / ms / 1e9, 1),
                }
                if errors:
                    rec["failed_attempts"] = errors
                records.append(rec)
                print(json.dumps(rec), flush=True)
        del q, k, v
        torch.cuda.empty_cache()
    return records


def time_with_retry(measure, label: str, attempts: int = 2) -> tuple[float | None, list[str]]:
    """`measure()` -> ms, tried up to `attempts` times; returns (ms or None, the errors).

    A baseline that fails must not sink the table. The retry: a cold dynamic-shape compile of
    FlexAttention's FLASH backend has failed in inductor lowering and then worked; the record
    keeps what the failed attempts raised."""
    errors = []
    for _ in range(attempts):
        try:
            return measure(), errors
        except Exception as exc:  # noqa: BLE001  (any failure of a baseline is reported)
            print(f"[bench] {label}: {type(exc).__name__}: {exc}", file=sys.stderr)
            errors.append(f"{type(exc).__name__}: {str(exc)[:300]}")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return None, errors


def markdown(env: dict, records: list[dict]) -> str:
    def find(kernel, T, f, p):
        for r in records:
            if (
                r["kernel"] == kernel
                and r["seq_len"] == T
                and r["pass"] == p
                and abs(r["fraction"] - f) < 1e-9
            ):
                return r
        return None

    lines = [
        f"{env['gpu']}, torch {env['torch']}, triton {env['triton']}, bf16, B=1, "
        f"Hq={HQ}, Hkv={HKV}, D={D} ({env['date'][:10]}). ms (useful TFLOP/s); "
        "ratio = ours / SDPA-cuDNN dense in the same run.",
        "",
        "vs flex: ours against FlexAttention written the obvious way (triton_token_sparse against "
        "the default backend; auto / fa4 against the FLASH backend where it ran).",
        "",
        "| T | pass | kernel | routed | ms | useful TFLOP/s | vs cuDNN | vs flex |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for T in sorted({r["seq_len"] for r in records}):
        for p in ("fwd", "fwdbwd"):
            cud = find("sdpa_cudnn", T, 1.0, p)
            for r in [r for r in records if r["seq_len"] == T and r["pass"] == p]:
                ratio = f"{r['ms'] / cud['ms']:.3f}x" if cud and r["kernel"] != "sdpa_cudnn" else ""
                flex = find("flex_token_sparse_static", T, r["fraction"], p) or find(
                    "flex_token_sparse", T, r["fraction"], p
                )
                flash = find("flex_flash_token_sparse", T, r["fraction"], p)
                flex = flash if flash and r["kernel"] != "triton_token_sparse" else flex
                vs_flex = (
                    f"{r['ms'] / flex['ms']:.3f}x"
                    if flex and r["kernel"] in ("triton_token_sparse", "auto_token_sparse", "fa4_token_sparse")
                    else ""
                )
                lines.append(
                    f"| {T // 1024}K | {p} | {r['kernel']} | {r['fraction']:.0%} | {r['ms']:.1f} "
                    f"| {r['useful_tflops']:.0f} | {ratio} | {vs_flex} |"
                )
    return "\n".join(lines)


class Accuracy:
    """Max abs error of out, dq, dk, dv of our Triton op against the fp32 PyTorch
    reference (bf16 inputs, three packed documents), each relative to the reference's max
    abs value. The reference is computed once; `errors()` runs ours under the current
    launch configs."""

    def __init__(self, T: int = 8192, fraction: float = 0.2, device: str = "cuda"):
        g = torch.Generator(device=device).manual_seed(1)
        self.q = torch.randn(1, HQ, T, D, device=device, dtype=torch.bfloat16, generator=g)
        self.k = torch.randn(1, HKV, T, D, device=device, dtype=torch.bfloat16, generator=g)
        self.v = torch.randn(1, HKV, T, D, device=device, dtype=torch.bfloat16, generator=g)
        self.do = torch.randn_like(self.q)
        self.route = torch.rand(1, T, device=device, generator=g) < fraction
        self.doc = torch.zeros(1, T, dtype=torch.int32, device=device)
        self.doc[:, T // 3 :] = 1
        self.doc[:, T // 2 :] = 2
        self.reference = self._run("torch", torch.float32)

    def _run(self, backend: str, dtype: torch.dtype) -> list[torch.Tensor]:
        from kernels import token_sparse_attention

        # Fresh leaves every run: `.to(dtype)` of a tensor already in `dtype` returns the
        # tensor itself, whose .grad would then accumulate over the sweep's variants.
        leaves = [t.to(dtype, copy=True).requires_grad_(True) for t in (self.q, self.k, self.v)]
        o = token_sparse_attention(*leaves, self.route, self.doc, backend=backend)
        o.backward(self.do.to(dtype))
        return [o.detach().float()] + [t.grad.float() for t in leaves]

    def errors(self) -> dict:
        got = self._run("triton", torch.bfloat16)
        return {
            f"err_{name}": float((g - r).abs().max() / r.abs().max())
            for name, r, g in zip(("out", "dq", "dk", "dv"), self.reference, got)
        }


def sweep(T: int, fraction: float, variants: list[str], check: bool = True) -> list[dict]:
    """Time each kernel of ours alone under variants of the launch configs (parse_variant),
    and (check) their error against the fp32 reference."""
    from kernels.flash import config
    from kernels.flash.host import attention_bwd, attention_fwd
    from kernels.flash.routing import build_routing

    torch.manual_seed(0)
    q = torch.randn(1, HQ, T, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, HKV, T, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, HKV, T, D, device="cuda", dtype=torch.bfloat16)
    do = torch.randn_like(q)
    route = make_route(T, fraction, "cuda")
    routing = build_routing(route, None)
    scale = D**-0.5
    o, lse = attention_fwd(q, k, v, routing, T, scale)
    checker = Accuracy() if check else None
    out = []
    for spec in ["default"] + variants:
        saved = {}
        try:
            for pass_name, ch in ({} if spec == "default" else parse_variant(spec)).items():
                saved[pass_name] = config.set_config(pass_name, D, **ch)
            fwd = _time_ms(lambda: attention_fwd(q, k, v, routing, T, scale), 300)
            dq = _time_ms(
                lambda: attention_bwd(q, k, v, o, lse, do, routing, T, scale, passes=("dq",)), 300
            )
            dkdv = _time_ms(
                lambda: attention_bwd(q, k, v, o, lse, do, routing, T, scale, passes=("dkdv",)),
                300,
            )
            rec = {
                "variant": spec,
                "fwd_ms": round(fwd, 3),
                "dq_ms": round(dq, 3),
                "dkdv_ms": round(dkdv, 3),
                "routing_ms": round(_time_ms(lambda: build_routing(route, None), 50), 3),
            }
            if check:
                rec.update({k_: round(e, 5) for k_, e in checker.errors().items()})
        except Exception as exc:
            rec = {"variant": spec, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        for pass_name, old in saved.items():
            config.GPU_CONFIGS[(pass_name, D)] = old
        print(json.dumps(rec), flush=True)
        out.append(rec)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--lengths", type=int, nargs="+", default=[32768, 65536, 131072])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.2, 0.5])
    ap.add_argument("--passes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    ap.add_argument(
        "--kernels",
        nargs="+",
        default=["sdpa", "flash_attn", "flex", "ours", "local", "fa4", "auto"],
        help="flash_attn runs only where the flash-attn package is installed, fa4 where "
        "flash-attn-4 runs (Hopper / Blackwell)",
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON path (default bench/results/<gpu>-<date>.json)"
    )
    ap.add_argument(
        "--sweep",
        nargs="*",
        default=None,
        help="config variants pass:bm,bn,warps,stages[,max_packed_heads][+flag...], ';'-joined",
    )
    ap.add_argument("--sweep-len", type=int, default=131072)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench.attention: needs a CUDA GPU")
    env = environment()
    # The table compiles FlexAttention once per length and routed count; past dynamo's
    # recompile limit (8 per code object) later calls would run eagerly and materialise the
    # (B, H, T, T) scores (the likely cause of the 2 TiB allocation of local_flex at 128K in
    # the first H100 run). Fail loudly instead of measuring a fallback.
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    if args.sweep is not None:
        result = {"env": env, "sweep": sweep(args.sweep_len, 0.2, args.sweep)}
    else:
        records: list[dict] = []
        try:
            run_table(args.lengths, args.fractions, args.passes, set(args.kernels), records)
            result = {"env": env, "records": records}
        except KeyboardInterrupt:  # e.g. `timeout -s INT`: keep what was measured
            print("[bench] interrupted: writing the records measured so far", file=sys.stderr)
            result = {"env": env, "records": records, "interrupted": True}
        print(markdown(env, records))
    gpu = env["gpu"].replace("NVIDIA ", "").replace(" ", "-")
    path = args.out or Path(__file__).parent / "results" / f"{gpu}-{env['date'][:10]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"[bench] wrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "8")
    main()
