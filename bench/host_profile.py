"""Where a training step's host time goes: one profiled step, read from its trace.

A step whose GPU is idle part of the time is host-bound: the host cannot issue the work
fast enough. `bench.train_throughput --profile` answers *why* from two more steps after its
timed window (both routed steps, neither timed):

1. a trace of CPU and CUDA activity (no Python stacks, so the host runs at nearly its normal
   speed): GPU busy (the union of kernel, copy and memset intervals over the step's wall
   time), kernel launches and host-device synchronisations per step, and host time by cause,
   per layer pass (forward, recomputation under activation checkpointing) and for the
   backward;
2. with `--profile-python`, the same step with the Python tracer on (much slower on the
   host, so only its *shares* and counts are read): host time by the package whose Python
   runs (DeepSpeed's hooks, FlashAttention-4's launch path, torch.compile's guards and
   dispatch, our layer, transformers, the trainer) and the Python line behind every
   synchronisation.

Host time by cause is *self* time: every traced interval on a host thread minus the
intervals nested in it, so the causes add up to the traced host time and nothing is counted
twice. Causes:

- `kernel_launch`: CUDA runtime / driver launch calls (`cudaLaunchKernel`, `cuLaunchKernel`,
  `cuLaunchKernelEx`, graph launches);
- `sync_wait`: calls that block the host until the GPU catches up (`cudaStreamSynchronize`,
  `cudaDeviceSynchronize`, `cudaEventSynchronize`, blocking `cudaMemcpy`); a `.item()`, a
  `nonzero` or a data-dependent shape is one of these;
- `cuda_api_other`: other runtime calls (`cudaMemcpyAsync`, event records, allocations);
- `aten_dispatch`: the C++ of torch operators around their launches (argument checks,
  dispatch, autograd bookkeeping);
- `untraced_python`: without Python stacks, the time inside the step's and the layer
  passes' annotations that no operator or runtime call covers: the Python between them;
- with Python stacks, the Python by package: `deepspeed`, `flash_attn4` (flash_attn, cutlass
  DSL, quack, tvm-ffi), `torch_compile` (dynamo guards, compiled-graph dispatch, AOT
  autograd runtime), `triton_launcher`, `l2a_python` (l2a/, kernels/), `transformers`,
  `trainer` (train/, bench/), `torch_python` (the rest of torch's Python), `other_python`.

Layer passes are marked from outside the model: a forward pre-hook and hook on every
decoder layer open and close a profiler annotation, named by the layer's kind (`l2a` or
`dense`) and pass (`recompute` when it runs inside the autograd engine, i.e. activation
checkpointing re-running the forward in the backward; `forward` otherwise). Backward host
time is whatever runs under the autograd engine's `evaluate_function` outside a
recomputation.

`analyse_trace` works on the Chrome trace JSON that `torch.profiler` exports, so it can be
run again on a saved trace (`python -m bench.host_profile TRACE.json --wall-ms W`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

LAUNCH_NEEDLES = ("LaunchKernel", "cuLaunch", "GraphLaunch", "LaunchCooperativeKernel")
SYNC_NAMES = frozenset({
    "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
    "cuStreamSynchronize", "cuCtxSynchronize", "cuEventSynchronize", "cuMemcpyDtoH_v2",
    "cudaMemcpy2D", "cudaStreamQuery_blocking",
})
# Operators that need the GPU's answer on the host (a value or a data-dependent shape): on
# CUDA each is a synchronisation; on the CPU they mark where one would be.
SYNC_OPS = frozenset({
    "aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::unique_dim",
    "aten::_unique2", "aten::unique_consecutive", "aten::repeat_interleave", "aten::is_nonzero",
    "aten::equal", "aten::_assert_async", "aten::tolist",
})
GPU_CATS = frozenset({"kernel", "gpu_memcpy", "gpu_memset"})
HOST_CATS = frozenset({"cpu_op", "cuda_runtime", "cuda_driver", "python_function",
                       "user_annotation", "cpu_instant_event"})
PASS_PREFIX = "l2a_host/"
STEP_ANNOTATION = "l2a_host_step"

# Python packages by the start of the file path the tracer names (relative to sys.path).
_PYTHON_PACKAGES = (
    ("deepspeed", ("deepspeed/",)),
    ("flash_attn4", ("flash_attn/", "cutlass/", "quack/", "tvm_ffi/", "torch_c_dlpack",
                     "nvidia_cutlass_dsl/")),
    ("torch_compile", ("torch/_dynamo/", "torch/_inductor/", "torch/_functorch/", "torch/fx/",
                       "torch/_guards", "torch/_higher_order_ops/", "torch/_subclasses/")),
    ("triton_launcher", ("triton/",)),
    ("l2a_python", ("l2a/", "kernels/")),
    ("transformers", ("transformers/",)),
    ("trainer", ("train/", "bench/")),
    ("torch_python", ("torch/",)),
)
CAUSES = ("kernel_launch", "sync_wait", "cuda_api_other", "aten_dispatch", "deepspeed",
          "flash_attn4", "torch_compile", "triton_launcher", "l2a_python", "transformers",
          "trainer", "torch_python", "other_python", "untraced_python")


def python_package(name: str) -> str | None:
    """The package of a Python tracer event (`path(line): function`); None for a built-in
    (`<built-in method ...>`), which takes its caller's package."""
    if name.startswith("<built-in") or name.startswith("<method"):
        return None
    path = name.split("(", 1)[0]
    for pkg, prefixes in _PYTHON_PACKAGES:
        if any(path.startswith(p) or f"/{p}" in path for p in prefixes):
            return pkg
    return "other_python"


def _is_launch(name: str) -> bool:
    return any(n in name for n in LAUNCH_NEEDLES)


def _is_sync(name: str) -> bool:
    return name in SYNC_NAMES


def _union_ms(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total / 1e3


class _Node:
    __slots__ = ("ev", "start", "end", "children", "parent", "cause")

    def __init__(self, ev: dict):
        self.ev = ev
        self.start = float(ev["ts"])
        self.end = self.start + float(ev.get("dur", 0.0))
        self.children: list[_Node] = []
        self.parent: _Node | None = None
        self.cause: str | None = None


def _forest(events: list[dict]) -> list[_Node]:
    """Each host thread's intervals nested by containment (the profiler's events of one
    thread nest properly); returns every node, parents set."""
    by_tid: dict = defaultdict(list)
    for ev in events:
        if ev.get("ph") == "X" and ev.get("cat") in HOST_CATS:
            by_tid[(ev.get("pid"), ev.get("tid"))].append(_Node(ev))
    nodes: list[_Node] = []
    for thread_nodes in by_tid.values():
        thread_nodes.sort(key=lambda n: (n.start, -n.end))
        stack: list[_Node] = []
        for n in thread_nodes:
            # A parent contains its children whole. Annotations opened and closed from Python
            # (record_function in a hook) begin inside the tracer's `__enter__` frame and end
            # past it: such a node goes under the nearest interval that contains all of it.
            while stack and (n.start >= stack[-1].end or n.end > stack[-1].end + 1e-3):
                stack.pop()
            if stack:
                n.parent = stack[-1]
                stack[-1].children.append(n)
            stack.append(n)
        nodes.extend(thread_nodes)
    return nodes


def _cause(node: _Node) -> str:
    if node.cause is not None:
        return node.cause
    ev, cat = node.ev, node.ev.get("cat")
    name = ev.get("name", "")
    if cat in ("cuda_runtime", "cuda_driver"):
        cause = "kernel_launch" if _is_launch(name) else "sync_wait" if _is_sync(name) else "cuda_api_other"
    elif cat == "cpu_op":
        cause = "torch_compile" if name.startswith("Torch-Compiled Region") else "aten_dispatch"
    elif cat == "python_function":
        cause = python_package(name) or (_python_parent_cause(node) or "other_python")
    else:  # annotations: their self time is the Python between the ops they hold
        cause = _python_parent_cause(node) or ("other_python" if _has_python_ancestor(node)
                                               else "untraced_python")
    node.cause = cause
    return cause


def _python_parent_cause(node: _Node) -> str | None:
    p = node.parent
    while p is not None:
        if p.ev.get("cat") == "python_function" and python_package(p.ev["name"]):
            return python_package(p.ev["name"])
        p = p.parent
    return None


def _has_python_ancestor(node: _Node) -> bool:
    p = node.parent
    while p is not None:
        if p.ev.get("cat") == "python_function":
            return True
        p = p.parent
    return False


def _layer_pass(node: _Node) -> str | None:
    """The innermost layer-pass annotation around a node (`l2a.forward`, ...), else
    `backward` if under the autograd engine, else None (the rest of the step)."""
    p, backward = node, False
    while p is not None:
        name = p.ev.get("name", "")
        if p.ev.get("cat") == "user_annotation" and name.startswith(PASS_PREFIX):
            return name[len(PASS_PREFIX):]
        if name.startswith("autograd::engine::evaluate_function"):
            backward = True
        p = p.parent
    return "backward" if backward else None


def _sync_origin(node: _Node) -> str:
    """Where a synchronisation comes from: the innermost Python frame outside torch's own
    Python (our layer, the trainer, DeepSpeed, transformers, FlashAttention-4), else the
    innermost torch operator around it."""
    p, op = node.parent, None
    while p is not None:
        cat, name = p.ev.get("cat"), p.ev.get("name", "")
        if cat == "python_function":
            pkg = python_package(name)
            if pkg not in (None, "torch_python", "torch_compile"):
                return name
        elif cat == "cpu_op" and op is None:
            op = name
        p = p.parent
    return op or "(no operator)"


def analyse_trace(trace: dict | list, wall_ms: float | None = None, top: int = 15) -> dict:
    """Host time by cause, launches and syncs per step and per layer pass, and GPU busy,
    from a Chrome trace (`prof.export_chrome_trace`). `wall_ms`: the step's wall time (the
    denominator of GPU busy); default: the span of the traced host events."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    nodes = _forest(events)
    gpu = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0))) for e in events
           if e.get("ph") == "X" and e.get("cat") in GPU_CATS]
    n_kernels = sum(1 for e in events if e.get("ph") == "X" and e.get("cat") == "kernel")
    if wall_ms is None:
        wall_ms = ((max(n.end for n in nodes) - min(n.start for n in nodes)) / 1e3) if nodes else 0.0
    has_python = any(n.ev.get("cat") == "python_function" for n in nodes)

    by_cause: Counter = Counter()
    passes: dict[str, dict] = defaultdict(lambda: {"count": 0, "host_ms": 0.0, "launches": 0,
                                                   "syncs": 0, "by_cause_ms": Counter()})
    sync_by_api: Counter = Counter()
    sync_origin: Counter = Counter()
    sync_ops: Counter = Counter()
    launches = syncs = 0
    for n in nodes:
        self_us = (n.end - n.start) - sum(c.end - c.start for c in n.children)
        cause = _cause(n)
        by_cause[cause] += self_us
        name, cat = n.ev.get("name", ""), n.ev.get("cat")
        layer_pass = _layer_pass(n)
        rec = passes[layer_pass] if layer_pass else None
        if rec is not None:
            rec["host_ms"] += self_us / 1e3
            rec["by_cause_ms"][cause] += self_us / 1e3
        if cat == "user_annotation" and name.startswith(PASS_PREFIX):
            passes[name[len(PASS_PREFIX):]]["count"] += 1
        if cat in ("cuda_runtime", "cuda_driver"):
            if _is_launch(name):
                launches += 1
                if rec is not None:
                    rec["launches"] += 1
            elif _is_sync(name):
                syncs += 1
                sync_by_api[name] += 1
                sync_origin[_sync_origin(n)] += 1
                if rec is not None:
                    rec["syncs"] += 1
        elif cat == "cpu_op" and name in SYNC_OPS:
            sync_ops[name] += 1  # on CPU tensors the operator marks where a sync would be

    host_ms = sum(by_cause.values()) / 1e3
    gpu_ms = _union_ms(gpu)
    out_passes = {}
    for key, rec in sorted(passes.items()):
        count = max(rec["count"], 1)
        out_passes[key] = {
            "count": rec["count"],
            "host_ms": round(rec["host_ms"], 3),
            "host_ms_per_pass": round(rec["host_ms"] / count, 3),
            "launches_per_pass": round(rec["launches"] / count, 1),
            "syncs_per_pass": round(rec["syncs"] / count, 2),
            "by_cause_ms": {k: round(v, 3) for k, v in rec["by_cause_ms"].most_common()},
        }
    return {
        "python_stacks": has_python,
        "wall_ms": round(wall_ms, 3),
        "gpu_busy_ms": round(gpu_ms, 3),
        "gpu_busy": round(gpu_ms / wall_ms, 3) if wall_ms else None,
        "kernels": n_kernels,
        "kernel_launches": launches,
        "host_syncs": syncs,
        "host_syncs_by_api": dict(sync_by_api.most_common()),
        "sync_operators": dict(sync_ops.most_common()),
        "host_syncs_by_origin": dict(sync_origin.most_common(top)),
        "host_ms_traced": round(host_ms, 3),
        "host_ms_by_cause": {k: round(v / 1e3, 3) for k, v in by_cause.most_common()},
        "host_share_by_cause": {k: round(v / 1e3 / host_ms, 3) for k, v in by_cause.most_common()}
        if host_ms else {},
        "passes": out_passes,
    }


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


def profile_host(step, model, trace_path: Path, python_stacks: bool, wall_ms_of=None) -> dict:
    """Run `step()` once under torch.profiler (CPU and, where present, CUDA activity; the
    Python tracer with `python_stacks`), layer passes marked on `model`; save the Chrome
    trace to `trace_path` and return `analyse_trace` of it."""
    import time

    import torch
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    cuda = torch.cuda.is_available()
    if cuda:
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize()
    with mark_layer_passes(model), profile(activities=activities, with_stack=python_stacks) as prof:
        t0 = time.perf_counter()
        with record_function(STEP_ANNOTATION):  # its self time: the host's untraced Python
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
    p.add_argument("--wall-ms", type=float, default=None, help="the step's wall time (GPU busy's denominator)")
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
