"""What a fast-path GPU run (scripts/gpu_bench.sh) answers, in one JSON.

Reads what the run left in its results folder: `tests.xml` (pytest's junit),
`attention.json` (bench.attention) and `train.json` (bench.train_throughput), any of them
missing, and prints (and writes to `summary.json` there) the GPU test counts and failures,
the attention ratios of the fast path's targets and each training variant's step times (all
timed steps, those off the dense path, expected), sparsity (and whether it was pinned) and
speedups.

    python -m bench.fast_path_summary RESULTS_DIR
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

# Attention targets (fwd+bwd): (ours, the reference it is held against).
ATTENTION_RATIOS = {
    "global_auto_vs_flex_flash": ("auto_token_sparse", "flex_flash_token_sparse"),
    "global_fa4_vs_flex_flash": ("fa4_token_sparse", "flex_flash_token_sparse"),
    "global_triton_vs_flex_flash": ("triton_token_sparse", "flex_flash_token_sparse"),
    # The same against FLASH compiled for the exact shape (where the dynamic compile fails).
    "global_auto_vs_flex_flash_static": ("auto_token_sparse", "flex_flash_token_sparse_static"),
    "global_fa4_vs_flex_flash_static": ("fa4_token_sparse", "flex_flash_token_sparse_static"),
    "local_auto_vs_fa4_window": ("local_auto", "local_fa4"),
    "local_triton_vs_fa4_window": ("local_triton", "local_fa4"),
    "dense_fa4_vs_cudnn": ("fa4_dense", "sdpa_cudnn"),
}


def tests_summary(path: Path) -> dict | None:
    if not path.exists():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = []
    for case in root.iter("testcase"):
        bad = case.find("failure")
        bad = bad if bad is not None else case.find("error")
        if bad is not None:
            message = (bad.get("message") or "").strip().splitlines()
            failed.append(f"{case.get('classname')}::{case.get('name')}: {message[0][:200] if message else ''}")
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failed": failed}


def attention_summary(path: Path) -> dict | None:
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    ms: dict[str, float] = {}
    for r in data.get("records", []):
        if r["pass"] == "fwdbwd":
            key = r["kernel"] if r["fraction"] == 1.0 else f"{r['kernel']}@{r['fraction']:g}"
            ms[f"{key} T={r['seq_len']}"] = r["ms"]
    ratios = {}
    for name, (ours, ref) in ATTENTION_RATIOS.items():
        for key, value in ms.items():
            kernel, length = key.split(" ")
            if kernel.split("@")[0] != ours:
                continue
            suffix = kernel[len(ours):]  # the same routed fraction for the reference
            other = ms.get(f"{ref}{suffix} {length}") or ms.get(f"{ref} {length}")
            if other:
                ratios[f"{name}{suffix} {length}"] = round(value / other, 3)
    return {"interrupted": bool(data.get("interrupted")), "fwdbwd_ms": ms, "ratios": ratios}


def train_summary(path: Path) -> dict | None:
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    keys = ("attention", "mean_step_s", "routed_step_s", "routed_step_median_s", "dense_path_step_s",
            "expected_step_s", "tokens_per_s_per_gpu", "sparsity", "pinned_sparsity", "peak_memory_gib")
    variants = {}
    for name, r in data.get("results", {}).items():
        entry = {k: r.get(k) for k in keys}
        prof = r.get("profile_kernel_ms")
        if prof:
            # Kernel time against the profiled step's wall time: far below it, the step is
            # host-bound and the step times compare host overheads, not kernels.
            entry["profile"] = {k: prof.get(k) for k in ("step_wall_ms", "kernel_ms", "attention", "matmul")}
        entry["per_step"] = [
            f"{s['step']}: {s['step_time_s']:.1f}s sparsity {s['sparsity']:.2f}{' dense-path' if s.get('dense') else ''}"
            for s in r.get("per_step", [])
        ]
        variants[name] = entry
    return {"seq_len": data.get("seq_len"), "sequence_parallel": data.get("sequence_parallel"),
            "skip_steps": data.get("skip_steps"), "variants": variants,
            "speedups": data.get("speedups", {}),
            # Over the steps off the dense path only (absent from results before it existed).
            "routed_speedups": data.get("routed_speedups", {})}


def summarize(out_dir: Path) -> dict:
    """Also `train_<name>.json` beside `train.json` (e.g. the before run of
    `scripts/gpu_bench.sh compare`), as `train_<name>`."""
    out = {
        "tests": tests_summary(out_dir / "tests.xml"),
        "attention": attention_summary(out_dir / "attention.json"),
        "train": train_summary(out_dir / "train.json"),
    }
    for path in sorted(out_dir.glob("train_*.json")):
        out[path.stem] = train_summary(path)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m bench.fast_path_summary RESULTS_DIR", file=sys.stderr)
        return 2
    out_dir = Path(argv[0])
    summary = summarize(out_dir)
    text = json.dumps(summary, indent=1)
    (out_dir / "summary.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
