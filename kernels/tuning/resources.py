"""Static profile of our attention kernels for a GPU target, compiled on any machine.

    python -m kernels.tuning.resources                         # sm_90a (H100/H200), defaults
    python -m kernels.tuning.resources --variants "fwd:+kv_desc" "dkdv:+compact+compact_desc"

No GPU is needed: the kernels are compiled exactly as the host functions launch them for
Qwen3-8B heads (Hq=32, Hkv=8, D=128, bf16), through Triton's own JIT path, against a
compile-only driver; nothing runs. Per kernel and variant (see kernels.tuning.variants.parse_variant)
it reports what ptxas allocated (registers per thread, spill stores/loads, shared memory)
and SASS instruction counts that matter here: HGMMA (tensor-core matmuls), MUFU.EX2
(exponentials), LDGSTS/UTMALDG (pointer vs TMA tile copies), STL/LDL (spill traffic),
REDG (global reductions: the atomic-dQ adds).
Counts are static (instructions in the binary, each inner loop once per specialisation:
masked head, unmasked middle, masked tail), so they compare variants, not run time.
Writes bench/results/kernel-resources-sm<arch>.json (beside the benchmarks' results) unless
--out names another file.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime import driver as triton_driver
from triton.runtime.jit import JITFunction

ROOT = Path(__file__).resolve().parents[2]

HQ, HKV, D, T = 32, 8, 128, 4096  # T only sets launch sizes; the code is the same at 128K
OPCODES = ("HGMMA", "MUFU.EX2", "LDGSTS", "UTMALDG", "STL", "LDL", "REDG", "BAR.SYNC", "SHFL.BFLY")


class _CompileOnlyDriver:
    """What JITFunction.run asks of the driver before it launches (it never launches here)."""

    def __init__(self, target: GPUTarget):
        self.target = target

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


@contextmanager
def compile_only(target: GPUTarget, compiled: list):
    """Kernel launches compile for `target` and record (name, CompiledKernel) instead of
    running; the host functions see CUDA-like inputs (GPU configs, TMA, no upcast)."""
    from kernels.flash import host

    orig_run, orig_on_gpu, orig_tma = JITFunction.run, host._on_gpu, host._tma_capable
    orig_driver = triton_driver._active  # None on a machine without a GPU driver

    def run(self, *args, grid, warmup, **kwargs):
        kernel = orig_run(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append((self.fn.__name__, kernel))
        return kernel

    triton_driver.set_active(_CompileOnlyDriver(target))
    JITFunction.run = run
    host._on_gpu = lambda t: True
    host._tma_capable = lambda device: target.arch >= 90
    try:
        yield
    finally:
        JITFunction.run, host._on_gpu, host._tma_capable = orig_run, orig_on_gpu, orig_tma
        triton_driver._active = orig_driver


def _tool(name: str) -> str:
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def cubin_profile(kernel) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(kernel.asm["cubin"])
        res = subprocess.run(
            [_tool("cuobjdump"), "--dump-resource-usage", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        sass = subprocess.run(
            [_tool("cuobjdump"), "-sass", str(path)], capture_output=True, text=True, check=True
        ).stdout
    regs = re.search(r"REG:(\d+)", res)
    stack = re.search(r"STACK:(\d+)", res)
    ops = Counter(
        m.group(1)
        for m in re.finditer(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)", sass)
    )
    counts = {
        op: sum(n for name, n in ops.items() if name == op or name.startswith(op + "."))
        for op in OPCODES
    }
    return {
        "registers": int(regs.group(1)) if regs else None,
        "stack_bytes": int(stack.group(1)) if stack else None,
        "shared_bytes": kernel.metadata.shared,
        "num_warps": kernel.metadata.num_warps,
        "num_stages": kernel.metadata.num_stages,
        "sass_instructions": sum(ops.values()),
        **{f"n_{op.lower().replace('.', '_')}": n for op, n in counts.items()},
    }


def profile_variant(spec: str, target: GPUTarget) -> list[dict]:
    from kernels.flash import config
    from kernels.flash.host import attention_bwd, attention_fwd
    from kernels.flash.routing import build_routing
    from kernels.tuning.variants import parse_variant

    q = torch.zeros(1, HQ, T, D, dtype=torch.bfloat16)
    k = torch.zeros(1, HKV, T, D, dtype=torch.bfloat16)
    v = torch.zeros_like(k)
    route = torch.zeros(1, T, dtype=torch.bool)
    route[:, ::5] = True
    routing = build_routing(route, None)
    lse = torch.zeros(1, HQ, T)
    saved = {}
    compiled: list = []
    try:
        for pass_name, ch in ({} if spec == "default" else parse_variant(spec)).items():
            saved[pass_name] = config.set_config(pass_name, D, **ch)
        with compile_only(target, compiled):
            attention_fwd(q, k, v, routing, T, D**-0.5)
            attention_bwd(q, k, v, q, lse, q, routing, T, D**-0.5)
    finally:
        for pass_name, old in saved.items():
            config.GPU_CONFIGS[(pass_name, D)] = old
    # `launch`: order within the pass sequence (the atomic-dQ backward runs the dq kernel
    # twice: prologue and epilogue).
    return [
        {"variant": spec, "kernel": name, "launch": i, **cubin_profile(kern)}
        for i, (name, kern) in enumerate(compiled)
    ]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: Hopper)")
    ap.add_argument("--variants", nargs="*", default=[], help="as in bench.attention --sweep")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    target = GPUTarget("cuda", args.arch, 32)
    records = []
    for spec in ["default"] + args.variants:
        for rec in profile_variant(spec, target):
            print(json.dumps(rec), flush=True)
            records.append(rec)
    out = args.out or ROOT / "bench" / "results" / f"kernel-resources-sm{args.arch}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "target": f"sm_{args.arch}",
                "triton": triton.__version__,
                "heads": {"q": HQ, "kv": HKV, "head_dim": D},
                "dtype": "bfloat16",
                "records": records,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"[kernels.tuning.resources] wrote {out}")


if __name__ == "__main__":
    main()
