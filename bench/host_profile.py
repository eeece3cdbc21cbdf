"""Where a training step's host time goes: one profiled step, read from its trace.

A step whose GPU is idle part of the time is host-bound: the host cannot issue the work
fast enough. `bench.train_throughput --profile` answers *why* from two more steps after its
timed window (both routed steps, neither timed):

1. a trace of CPU and CUDA activity (no Python stacks, so the host runs at nearly its normal
   speed): GPU busy (the union of kernel, copy and memset intervals over the step's wall
   time), kernel launches and host-device synchronisations per step, and host time by cause,
   per layer pass (forward, recomputation under activation checkpointing, backward) and per
   host thread (the step's, the autograd engine's);
2. with `--profile-python`, the same step with the Python tracer on (much slower on the
   host, so only its *shares* and counts are read): host time by the package whose Python
   runs (DeepSpeed's hooks, FlashAttention-4's launch path, torch.compile's guards and
   dispatch, our layer, transformers, the trainer) and the Python line behind every
   synchronisation.

The trace's analysis (host time by cause, by thread and by layer pass, counted once:
every instant of a thread to the innermost event open on it) is bench.host_trace's
`analyse_trace`; this module marks the layer passes and runs the profiled step.

Layer passes are marked from outside the model: a forward pre-hook and hook on every
decoder layer open and close a profiler annotation, named by the layer's kind (`l2a` or
`dense`) and pass (`recompute` when it runs inside the autograd engine, i.e. activation
checkpointing re-running the forward in the backward; `forward` otherwise). A layer's
backward is found in the trace: the autograd nodes its forward made (bench.host_trace).

`analyse_trace` works on the Chrome trace JSON that `torch.profiler` exports, so it can be
run again on a saved trace (`python -m bench.host_profile TRACE.json --wall-ms W`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import defaultdict
from pathlib import Path

from bench.host_trace import PASS_PREFIX, STEP_ANNOTATION, analyse_trace, python_package

__all__ = ["PASS_PREFIX", "STEP_ANNOTATION", "analyse_trace", "mark_layer_passes", "profile_host",
           "python_package", "summary_lines", "main"]


def _decoder_layers(model) -> list:
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def _layer_kind(layer) -> str:
    return "l2a" if type(layer).__name__.startswith("L2A") else "dense"


@contextlib.contextmanager
def mark_layer_passes(model):
    """Profiler annotations around every decoder layer's forward, named by kind and pass
    (`l2a_host/l2a.forward`, `l2a_host/dense.recompute`, ...); removed on exit. Yields the
    annotations still open, by module."""
    import torch
    from torch.autograd.profiler import record_function

    stacks: dict[int, list] = defaultdict(list)
    handles = []

    def pre(module, args, kwargs=None):
        in_backward = torch._C._current_graph_task_id() != -1
        rf = record_function(f"{PASS_PREFIX}{_layer_kind(module)}.{'recompute' if in_backward else 'forward'}")
        rf.__enter__()
        stacks[id(module)].append(rf)

    def post(module, args, output, kwargs=None):
        if stacks[id(module)]:
            stacks[id(module)].pop().__exit__(None, None, None)

    for layer in _decoder_layers(model):
        handles.append(layer.register_forward_pre_hook(pre))
        # always_call: non-reentrant checkpointing stops a recomputation early by raising
        # once the tensors the backward needs are back; the annotation must close there too
        # (left open, it would swallow the rest of the backward).
        handles.append(layer.register_forward_hook(post, always_call=True))
    try:
        yield stacks  # the annotations still open, by module (empty between steps)
    finally:
        for h in handles:
            h.remove()
        for s in stacks.values():  # a forward that raised: close what it opened
            while s:
                s.pop().__exit__(None, None, None)


def profile_host(step, model, trace_path: Path, python_stacks: bool, all_threads: bool = False) -> dict:
    """Run `step()` once under torch.profiler (CPU and, where present, CUDA activity; the
    Python tracer with `python_stacks`), layer passes marked on `model`; save the Chrome
    trace to `trace_path` and return `analyse_trace` of it. The profiler records the thread
    that calls this and the autograd engine's device threads; `all_threads`: every thread
    (a step that runs work on threads of its own)."""
    import time

    import torch
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    cuda = torch.cuda.is_available()
    if cuda:
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    options = {}
    if all_threads:
        from torch._C._profiler import _ExperimentalConfig

        options["experimental_config"] = _ExperimentalConfig(profile_all_threads=True)
    with mark_layer_passes(model), profile(activities=activities, with_stack=python_stacks, **options) as prof:
        t0 = time.perf_counter()
        # The step's window in the trace; its own time: the Python between the operators, or
        # the wait for the autograd engine's thread.
        with record_function(STEP_ANNOTATION):
            step()
        if cuda:
            torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) * 1e3
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(trace_path))
    with open(trace_path) as f:
        report = analyse_trace(json.load(f), wall_ms=wall_ms)
    report["trace"] = trace_path.name
    return report


def summary_lines(report: dict, label: str = "") -> list[str]:
    """A few lines for the log: GPU busy, counts, the top causes, the passes."""
    head = (f"{label}GPU busy {report['gpu_busy']} of {report['wall_ms']} ms; "
            f"{report['kernel_launches']} launches, {report['host_syncs']} syncs; "
            f"traced host {report['host_ms_traced']} ms")
    causes = ", ".join(f"{k} {v}" for k, v in list(report["host_ms_by_cause"].items())[:8])
    lines = [head, f"{label}host ms by cause: {causes}"]
    for tid, t in report.get("threads", {}).items():
        top = ", ".join(f"{k} {v}" for k, v in list(t["by_cause_ms"].items())[:4])
        lines.append(f"{label}  thread {tid} ({t['role']}): traced {t['traced_ms']} of "
                     f"{t['span_ms']} ms; {top}")
    for key, p in report["passes"].items():
        lines.append(f"{label}  {key}: x{p['count']} {p['host_ms_per_pass']} ms/pass, "
                     f"{p['launches_per_pass']} launches, {p['syncs_per_pass']} syncs per pass")
    if report["host_syncs_by_origin"]:
        lines.append(f"{label}syncs by origin: " + "; ".join(
            f"{k} x{v}" for k, v in list(report["host_syncs_by_origin"].items())[:8]))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Host time by cause from a saved torch.profiler Chrome trace")
    p.add_argument("trace", type=Path)
    p.add_argument("--wall-ms", type=float, default=None, help="the step's wall time (GPU busy's denominator; the window's length from the "
                   "step's annotation, where the trace has one)")
    args = p.parse_args(argv)
    try:
        with open(args.trace) as f:
            trace = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        print(f"{args.trace}: cannot read a Chrome trace: {e}", file=sys.stderr)
        return 2
    report = analyse_trace(trace, wall_ms=args.wall_ms)
    print("\n".join(summary_lines(report)))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
