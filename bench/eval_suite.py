"""Wall time of the evaluation suite (`python -m eval`'s default tasks, perplexity and
routing) on a Qwen3-1.7B-shaped L2A model with random weights (no download), per length.

Random weights never stop early, so every sample generates its full `--max-new-tokens`;
the suite is prefill-dominated at long context (one prefill per sample, plus one
perplexity forward per length). The JSON records per length: the time of perplexity, of
each task's samples (prefill + greedy decoding), the prompt tokens, peak GPU memory; in
`--out`, else `eval_suite.json` in `$L2A_RESULTS_DIR` (if set) or `bench/results/`. `--gpu-tests` first runs `pytest -m gpu tests/eval/`
(in a subprocess, before the model is built) and records its outcome in the same JSON. The
JSON is rewritten after each step (`"complete": false` until the end), so a run cut short
by a time limit still leaves what it measured.

    python -m bench.eval_suite                                   # 32K and 128K, one GPU
    python -m bench.eval_suite --lengths 32768 --samples 2
    python -m bench.eval_suite --model tiny --window 256 --lengths 2048 --max-new-tokens 4  # CPU smoke
    python -m bench.eval_suite --gpu-tests --max-new-tokens 8    # + the GPU tests, one JSON

Needs torch, triton, transformers, hydra-core/omegaconf (no matplotlib, datasets, wandb).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.results_dir import results_dir

ROOT = Path(__file__).resolve().parent.parent


def _out_path(args) -> Path:
    if args.out:
        return Path(args.out)
    return results_dir() / "eval_suite.json"


def _write(path: Path, out: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(path)


def _gpu_tests(timeout: int) -> dict:
    """`pytest -m gpu tests/eval/` in a subprocess: its exit code, summary line and tail."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
           "tests/eval/"]
    t = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        rc, log = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        rc = None
        log = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
        log += f"\ntimed out after {timeout}s"
    summary = [ln for ln in log.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", ln)]
    return {"command": "pytest -q -m gpu tests/eval/", "returncode": rc,
            "summary": summary[-1].strip("= ") if summary else None,
            "seconds": round(time.perf_counter() - t, 1), "log_tail": log[-3000:]}


def main(argv: list[str] | None = None) -> int:
    from eval.config import EvalConfig, ModelSpec, PerplexityConfig
    from eval.load import load_model
    from eval.runner import evaluate
    from train.data.ruler import TASKS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="qwen3_1p7b_random", help="conf/model option with random_base")
    p.add_argument("--lengths", type=int, nargs="+", default=[32768, 131072])
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--depths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=32,
                   help="per sample (RULER's defaults are 30-128; random weights never stop early)")
    p.add_argument("--window", type=int, default=4095)
    p.add_argument("--dense", action="store_true", help="the base model without L2A (SDPA)")
    p.add_argument("--out", default=None)
    p.add_argument("--gpu-tests", action="store_true",
                   help="first run `pytest -m gpu tests/eval/` and record it in the JSON")
    p.add_argument("--gpu-tests-timeout", type=int, default=120)
    args = p.parse_args(argv)

    path = _out_path(args)
    out = {"benchmark": "eval_suite", "complete": False, "date": time.strftime("%Y-%m-%d")}
    if args.gpu_tests:
        out["gpu_tests"] = _gpu_tests(args.gpu_tests_timeout)
        print(f"gpu tests: {out['gpu_tests']['summary']}", flush=True)
        _write(path, out)
    t0 = time.perf_counter()
    model, tok = load_model(ModelSpec(random=args.model, l2a=not args.dense, window=args.window))
    load_s = time.perf_counter() - t0
    cuda = torch.cuda.is_available()
    per_length = []
    out.update({
        "model": f"{args.model} (random weights, "
                 + ("dense SDPA)" if args.dense else f"L2A, window {args.window})"),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "torch": torch.__version__,
        "dtype": str(next(model.parameters()).dtype),
        "config": {"tasks": args.tasks, "depths": args.depths, "samples": args.samples,
                   "max_new_tokens": args.max_new_tokens, "perplexity_rows": 1},
        "load_s": load_s,
        "lengths": per_length,
    })
    for n in args.lengths:
        cfg = EvalConfig(tasks=args.tasks, lengths=[n], depths=args.depths, samples=args.samples,
                         max_new_tokens=args.max_new_tokens,
                         perplexity=PerplexityConfig(data="generated", rows=1, buckets=8),
                         plots=False).check()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        t = time.perf_counter()
        progress = out.setdefault("progress", [])

        def log(line: str, n=n, t=t) -> None:
            # Every progress line lands in the JSON too, so that a run stopped by a time
            # limit mid-length still records the samples it timed.
            print(line, file=sys.stderr, flush=True)
            progress.append({"length": n, "elapsed_s": round(time.perf_counter() - t, 3),
                             "line": line})
            _write(path, out)

        res = evaluate(model, tok, cfg, log=log)
        if cuda:
            torch.cuda.synchronize()
        tasks = {}
        for r in res["samples"]:
            d = tasks.setdefault(r["task"], {"samples": 0, "seconds": 0.0, "prompt_tokens": 0,
                                             "generated_tokens": 0})
            d["samples"] += 1
            d["seconds"] += r["seconds"]
            d["prompt_tokens"] += r["prompt_tokens"]
            d["generated_tokens"] += r["generated_tokens"]
        per_length.append({
            "length": n, "total_s": time.perf_counter() - t,
            "perplexity_s": res["timings"]["perplexity_s"], "tasks_s": res["timings"]["tasks_s"],
            "samples": len(res["samples"]), "tasks": tasks,
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        })
        print(f"length {n}: {per_length[-1]['total_s']:.1f}s ({len(res['samples'])} samples, "
              f"perplexity {res['timings']['perplexity_s']:.1f}s)", flush=True)
        out["total_s"] = time.perf_counter() - t0
        _write(path, out)
    out.update(total_s=time.perf_counter() - t0, complete=True)
    _write(path, out)
    print(path)
    gpu_rc = out.get("gpu_tests", {}).get("returncode", 0)
    return 0 if gpu_rc in (0, 5) else 1  # 5: pytest collected nothing (no GPU tests selected)


if __name__ == "__main__":
    raise SystemExit(main())
