"""Host time of one profiled step, read from its Chrome trace (`torch.profiler`'s
`export_chrome_trace`): by cause, by host thread and by layer pass; kernel launches, host
syncs and GPU busy.

Host time is *self* time, counted once: every instant of a host thread's traced time goes to
the innermost event open on that thread then (the one that began last). So a thread's causes
add up to its traced time (the union of its events, at most its busy span), never below 0,
even where events do not nest: an annotation opened and closed from Python hooks begins
inside the tracer's `__enter__` frame and ends inside the hook after the layer's forward,
and an annotation left open runs past the operators it began in. Threads are counted apart
(`threads`): the autograd engine runs a CUDA backward on a thread of its own while the step's
thread waits in `backward()`, so the whole is at most the step's wall time times the threads.
Only the step's window counts: from the start of the step's annotation (`l2a_host_step`, set
by bench.host_profile) for the step's wall time; without one, the traced span.

Causes:
- `kernel_launch`: CUDA runtime / driver launch calls (`cudaLaunchKernel`, `cuLaunchKernel`,
  `cuLaunchKernelEx`, graph launches);
- `sync_wait`: calls that block the host until the GPU catches up (`cudaStreamSynchronize`,
  `cudaDeviceSynchronize`, `cudaEventSynchronize`, blocking `cudaMemcpy`); a `.item()`, a
  `nonzero` or a data-dependent shape is one of these;
- `cuda_api_other`: other runtime calls (`cudaMemcpyAsync`, event records, allocations);
- `aten_dispatch`: the C++ of torch operators around their launches (argument checks,
  dispatch, autograd bookkeeping, the autograd engine's node calls);
- `autograd_wait`: a thread blocked in `backward()` while another thread runs the backward's
  nodes: the step's thread with nothing of its own traced (or, with Python stacks, inside
  the engine's `run_backward`) while an autograd node runs on another thread of the process;
- `untraced_python`: without Python stacks, time inside the step's and the layer passes'
  annotations that no operator or runtime call covers (and no other thread's backward): the
  Python between them;
- with Python stacks, the Python by package: `deepspeed`, `flash_attn4` (flash_attn, cutlass
  DSL, quack, tvm-ffi), `torch_compile` (dynamo guards, compiled-graph dispatch, AOT
  autograd runtime), `triton_launcher`, `l2a_python` (l2a/, kernels/), `transformers`,
  `trainer` (train/, bench/), `torch_python` (the rest of torch's Python), `other_python`;
  an annotation's time goes to the package of the innermost Python frame open around it.

Layer passes (`passes`): the annotations `l2a_host/<kind>.forward` and
`l2a_host/<kind>.recompute` (bench.host_profile's hooks) hold their time, launches and syncs;
`<kind>.backward` is the autograd engine's nodes (`evaluate_function`) that a layer pass
created, found by the profiler's forward-backward links (`fwdbwd` flow events: the operator
that made a node, the node's backward call), outside any recomputation; its count is the
layer passes whose nodes ran. `backward` is the engine's other nodes (what no decoder layer
made: the loss, the head, the embeddings, and parameter-gradient accumulation with the hooks
on it, such as ZeRO's reductions); its count is the backward runs (engine work not
interrupted by a layer's forward). A segment of time belongs to the innermost pass
annotation or autograd node open around the event it is charged to, as of that event's
start.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict

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
                       "user_annotation"})
RUNTIME_CATS = frozenset({"cuda_runtime", "cuda_driver"})
PASS_PREFIX = "l2a_host/"
STEP_ANNOTATION = "l2a_host_step"
AUTOGRAD_NODE = "autograd::engine::evaluate_function"
# The engine's entry from Python: where the calling thread waits for the device threads.
RUN_BACKWARD = "<built-in method run_backward"

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
CAUSES = ("kernel_launch", "sync_wait", "cuda_api_other", "aten_dispatch", "autograd_wait",
          "deepspeed", "flash_attn4", "torch_compile", "triton_launcher", "l2a_python",
          "transformers", "trainer", "torch_python", "other_python", "untraced_python")


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


def _union(intervals) -> list[tuple[float, float]]:
    """Sorted, merged intervals."""
    merged: list[list[float]] = []
    for s, e in sorted(intervals):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged]


def _union_ms(intervals) -> float:
    return sum(e - s for s, e in _union(intervals)) / 1e3


def _overlap(a: float, b: float, merged: list[tuple[float, float]], starts: list[float]) -> float:
    """Length of [a, b) covered by the merged intervals (their starts given)."""
    total, i = 0.0, max(bisect.bisect_right(starts, a) - 1, 0)
    while i < len(merged) and merged[i][0] < b:
        s, e = merged[i]
        total += max(0.0, min(b, e) - max(a, s))
        i += 1
    return total


class _Ev:
    """One host event of one thread, clipped to the step's window. `parent`: the innermost
    event open on its thread when it began; `marker`: the innermost layer-pass annotation or
    autograd node around it then (itself, if it is one)."""

    __slots__ = ("ev", "name", "cat", "start", "end", "parent", "marker", "pkg", "in_python",
                 "cause", "kind")

    def __init__(self, ev: dict, start: float, end: float):
        self.ev, self.name, self.cat = ev, ev.get("name", ""), ev.get("cat")
        self.start, self.end = start, end
        self.parent = self.marker = self.pkg = self.cause = None
        self.in_python = False
        # "pass": a layer-pass annotation; "node": an autograd node's call; else None
        if self.cat == "user_annotation" and self.name.startswith(PASS_PREFIX):
            self.kind = "pass"
        elif self.cat == "cpu_op" and self.name.startswith(AUTOGRAD_NODE):
            self.kind = "node"
        else:
            self.kind = None


def _static_cause(n: _Ev) -> str | None:
    """The cause of an event's own time, where it depends on the event alone (and on the
    Python frames around it at its start); None for the annotations and the engine's Python
    entry, whose time is split by what runs at each instant."""
    if n.cat in RUNTIME_CATS:
        return "kernel_launch" if _is_launch(n.name) else "sync_wait" if _is_sync(n.name) else "cuda_api_other"
    if n.cat == "cpu_op":
        return "torch_compile" if n.name.startswith("Torch-Compiled Region") else "aten_dispatch"
    if n.cat == "python_function" and not n.name.startswith(RUN_BACKWARD):
        return n.pkg or "other_python"
    return None


def _annotation_python(active: list[_Ev]) -> str | None:
    """The package of the innermost Python frame open under the innermost event (an
    annotation): the Python that runs between the operators it holds; "other_python" if
    only built-ins are open, None if no Python frame is."""
    seen_python = False
    for e in reversed(active[:-1]):
        if e.cat == "python_function":
            seen_python = True
            pkg = python_package(e.name)
            if pkg:
                return pkg
    return "other_python" if seen_python else None


class _Sweep:
    """One thread's events in time order; charges each instant to the innermost open event."""

    def __init__(self, evs: list[_Ev], others_backward: list[tuple[float, float]]):
        self.evs = evs
        self.others = others_backward  # other threads' autograd nodes, merged
        self.other_starts = [s for s, _ in others_backward]
        self.by_cause: Counter = Counter()
        self.by_marker: dict = defaultdict(Counter)  # marker (or None) -> cause -> us
        self.markers: list[_Ev] = []  # in start order

    def run(self) -> None:
        points = []
        for i, n in enumerate(self.evs):
            points.append((n.start, 1, i))
            if n.end > n.start:
                points.append((n.end, 0, i))
        points.sort()  # at one instant, what ends goes before what begins
        active: list[int] = []  # open events by start order: the innermost last
        prev = None
        for t, begins, i in points:
            if active and t > prev:
                self._charge([self.evs[j] for j in active] if self._needs_stack(active) else None,
                             self.evs[active[-1]], prev, t)
            n = self.evs[i]
            if begins:
                self._open(n, self.evs[active[-1]] if active else None)
                if n.end > n.start:
                    active.append(i)  # began after every open one: innermost
            else:
                del active[bisect.bisect_left(active, i)]
            prev = t

    def _needs_stack(self, active: list[int]) -> bool:
        return self.evs[active[-1]].cat == "user_annotation"

    def _open(self, n: _Ev, parent: _Ev | None) -> None:
        n.parent = parent
        n.marker = n if n.kind else (parent.marker if parent else None)
        if n.cat == "python_function":
            n.in_python = True
            n.pkg = python_package(n.name) or (parent.pkg if parent else None)
        elif parent is not None:
            n.in_python, n.pkg = parent.in_python, parent.pkg
        n.cause = _static_cause(n)
        if n.kind:
            self.markers.append(n)

    def _charge(self, stack: list[_Ev] | None, n: _Ev, a: float, b: float) -> None:
        dt = b - a
        if n.cause is not None:
            self._add(n, n.cause, dt)
            return
        if n.cat == "user_annotation":
            pkg = _annotation_python(stack)
            if pkg is not None:
                self._add(n, pkg, dt)
                return
            idle = "untraced_python"
        else:  # the engine's Python entry: its own time is the engine's
            idle = n.pkg or "torch_python"
        wait = _overlap(a, b, self.others, self.other_starts) if self.others else 0.0
        if wait > 0:
            self._add(n, "autograd_wait", wait)
        if dt - wait > 0:
            self._add(n, idle, dt - wait)

    def _add(self, n: _Ev, cause: str, us: float) -> None:
        self.by_cause[cause] += us
        self.by_marker[n.marker][cause] += us


def _innermost_marker(markers: list[_Ev], starts: list[float], ts: float) -> _Ev | None:
    """The innermost layer-pass annotation or autograd node of a thread open at `ts`."""
    j = bisect.bisect_right(starts, ts) - 1
    m = markers[j] if j >= 0 else None
    while m is not None and not (m.start <= ts <= m.end):
        m = m.parent.marker if m.parent else None
    return m


def _layer_of_nodes(events: list[dict], markers_by_thread: dict) -> dict:
    """Autograd node call -> the layer pass annotation whose operator made the node, from the
    profiler's `fwdbwd` flows (start: the forward operator; finish: the node's backward)."""
    flows: dict = defaultdict(dict)
    for e in events:
        if e.get("cat") == "fwdbwd" and e.get("ph") in ("s", "f"):
            flows[e.get("id")][e["ph"]] = ((e.get("pid"), e.get("tid")), float(e["ts"]))
    index = {th: (ms, [m.start for m in ms]) for th, ms in markers_by_thread.items()}
    out = {}
    for ends in flows.values():
        if "s" not in ends or "f" not in ends:
            continue
        (fth, fts), (bth, bts) = ends["s"], ends["f"]
        if fth not in index or bth not in index:
            continue
        made_in = _innermost_marker(*index[fth], fts)
        node = _innermost_marker(*index[bth], bts)
        while node is not None and node.kind != "node":
            node = node.parent.marker if node.parent else None
        if made_in is not None and made_in.kind == "pass" and node is not None:
            out[node] = made_in
    return out


def _pass_name(marker: _Ev | None, layer_of: dict) -> str | None:
    if marker is None:
        return None
    if marker.kind == "pass":
        return marker.name[len(PASS_PREFIX):]
    made_in = layer_of.get(marker)
    return f"{made_in.name[len(PASS_PREFIX):].split('.')[0]}.backward" if made_in else "backward"


def _backward_runs(markers_by_thread: dict) -> int:
    """Backward runs: the engine's outermost node calls, grouped where no layer's forward
    begins between them."""
    timeline = []
    for ms in markers_by_thread.values():
        for m in ms:
            if m.kind == "pass" and m.name.endswith(".forward"):
                timeline.append((m.start, 0))
            elif m.kind == "node" and not _inside_node(m):
                timeline.append((m.start, 1))
    runs, in_run = 0, False
    for _, is_node in sorted(timeline):
        runs += is_node and not in_run
        in_run = bool(is_node)
    return runs


def _inside_node(m: _Ev) -> bool:
    p = m.parent.marker if m.parent else None
    while p is not None:
        if p.kind == "node":
            return True
        p = p.parent.marker if p.parent else None
    return False


def _sync_origin(n: _Ev) -> str:
    """Where a synchronisation comes from: the innermost Python frame outside torch's own
    Python (our layer, the trainer, DeepSpeed, transformers, FlashAttention-4), else the
    innermost torch operator around it."""
    p, op = n.parent, None
    while p is not None:
        if p.cat == "python_function":
            if python_package(p.name) not in (None, "torch_python", "torch_compile"):
                return p.name
        elif p.cat == "cpu_op" and op is None:
            op = p.name
        p = p.parent
    return op or "(no operator)"


def _window(host: list[dict], wall_ms: float | None) -> tuple[float, float] | None:
    """The step's window in trace time: its annotation's start, for the wall time (or to the
    annotation's end); None (everything) without one."""
    steps = [e for e in host if e.get("name") == STEP_ANNOTATION]
    if not steps:
        return None
    start = min(float(e["ts"]) for e in steps)
    end = max(float(e["ts"]) + float(e.get("dur", 0.0)) for e in steps)
    return start, (start + wall_ms * 1e3) if wall_ms else end


def _threads(host: list[dict], window) -> dict:
    by_thread: dict = defaultdict(list)
    for ev in host:
        s = float(ev["ts"])
        e = s + float(ev.get("dur", 0.0))
        if window is not None:
            if e < window[0] or s > window[1]:
                continue
            s, e = max(s, window[0]), min(e, window[1])
        by_thread[(ev.get("pid"), ev.get("tid"))].append(_Ev(ev, s, e))
    for evs in by_thread.values():
        evs.sort(key=lambda n: (n.start, -n.end))  # an outer event before what it holds
    return by_thread


def analyse_trace(trace: dict | list, wall_ms: float | None = None, top: int = 15) -> dict:
    """Host time by cause, thread and layer pass, launches and syncs per step and per layer
    pass, and GPU busy, from a Chrome trace (`prof.export_chrome_trace`). `wall_ms`: the
    step's wall time (the denominator of GPU busy, and the window's length from the step's
    annotation); default: the span of the traced host events."""
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    host = [e for e in events if e.get("ph") == "X" and e.get("cat") in HOST_CATS]
    window = _window(host, wall_ms)
    by_thread = _threads(host, window)
    all_evs = [n for evs in by_thread.values() for n in evs]
    if window is None and all_evs:
        window = (min(n.start for n in all_evs), max(n.end for n in all_evs))
    if wall_ms is None:
        wall_ms = (window[1] - window[0]) / 1e3 if window else 0.0

    # Each thread's view of the others' backward: their autograd nodes, merged per process.
    nodes_of = {th: [(n.start, n.end) for n in evs if n.kind == "node"] for th, evs in by_thread.items()}
    sweeps = {}
    for th, evs in by_thread.items():
        others = _union(iv for o, ivs in nodes_of.items() if o != th and o[0] == th[0] for iv in ivs)
        sweeps[th] = _Sweep(evs, others)
        sweeps[th].run()
    markers_by_thread = {th: sw.markers for th, sw in sweeps.items()}
    layer_of = _layer_of_nodes(events, markers_by_thread)

    by_cause: Counter = Counter()
    passes: dict[str, dict] = defaultdict(lambda: {"count": 0, "host_us": 0.0, "launches": 0,
                                                   "syncs": 0, "by_cause_us": Counter()})
    for sw in sweeps.values():
        by_cause.update(sw.by_cause)
        for marker, causes in sw.by_marker.items():
            name = _pass_name(marker, layer_of)
            if name is not None:
                passes[name]["host_us"] += sum(causes.values())
                passes[name]["by_cause_us"].update(causes)
    sync_by_api: Counter = Counter()
    sync_origin: Counter = Counter()
    sync_ops: Counter = Counter()
    launches = syncs = 0
    for n in all_evs:
        if n.kind == "pass":
            passes[_pass_name(n, layer_of)]["count"] += 1
        elif n.cat in RUNTIME_CATS:
            name = _pass_name(n.marker, layer_of)
            if _is_launch(n.name):
                launches += 1
                if name:
                    passes[name]["launches"] += 1
            elif _is_sync(n.name):
                syncs += 1
                sync_by_api[n.name] += 1
                sync_origin[_sync_origin(n)] += 1
                if name:
                    passes[name]["syncs"] += 1
        elif n.cat == "cpu_op" and n.name in SYNC_OPS:
            sync_ops[n.name] += 1  # on CPU tensors the operator marks where a sync would be
    for kind in {k.split(".")[0] for k in passes if k.endswith(".backward")}:
        passes[f"{kind}.backward"]["count"] = len({id(a) for node, a in layer_of.items()
                                                   if _pass_name(node, layer_of) == f"{kind}.backward"})
    if "backward" in passes:
        passes["backward"]["count"] = _backward_runs(markers_by_thread)

    gpu = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0))) for e in events
           if e.get("ph") == "X" and e.get("cat") in GPU_CATS]
    gpu_ms = _union_ms(gpu)
    host_ms = sum(by_cause.values()) / 1e3
    return {
        "python_stacks": any(n.cat == "python_function" for n in all_evs),
        "wall_ms": round(wall_ms, 3),
        "window_ms": round((window[1] - window[0]) / 1e3, 3) if window else 0.0,
        "gpu_busy_ms": round(gpu_ms, 3),
        "gpu_busy": round(gpu_ms / wall_ms, 3) if wall_ms else None,
        "kernels": sum(1 for e in events if e.get("ph") == "X" and e.get("cat") == "kernel"),
        "kernel_launches": launches,
        "host_syncs": syncs,
        "host_syncs_by_api": dict(sync_by_api.most_common()),
        "sync_operators": dict(sync_ops.most_common()),
        "host_syncs_by_origin": dict(sync_origin.most_common(top)),
        "host_ms_traced": round(host_ms, 3),
        "host_ms_by_cause": {k: round(v / 1e3, 3) for k, v in by_cause.most_common()},
        "host_share_by_cause": {k: round(v / 1e3 / host_ms, 3) for k, v in by_cause.most_common()}
        if host_ms else {},
        "threads": _thread_records(by_thread, sweeps),
        "passes": {key: _pass_record(rec) for key, rec in sorted(passes.items())},
    }


def _thread_records(by_thread: dict, sweeps: dict) -> dict:
    """Per host thread: its role (`step`: the step's annotation is on it; `autograd`: it runs
    autograd nodes; `other`), its busy span, its traced time and that time by cause."""
    pids = {th[0] for th in by_thread}
    out = {}
    for th, evs in sorted(by_thread.items(), key=lambda kv: str(kv[0])):
        role = ("step" if any(n.name == STEP_ANNOTATION for n in evs)
                else "autograd" if any(n.kind == "node" for n in evs) else "other")
        causes = sweeps[th].by_cause
        out[str(th[1]) if len(pids) == 1 else f"{th[0]}/{th[1]}"] = {
            "role": role,
            "span_ms": round((max(n.end for n in evs) - min(n.start for n in evs)) / 1e3, 3),
            "traced_ms": round(sum(causes.values()) / 1e3, 3),
            "by_cause_ms": {k: round(v / 1e3, 3) for k, v in causes.most_common()},
        }
    return out


def _pass_record(rec: dict) -> dict:
    count = max(rec["count"], 1)
    return {
        "count": rec["count"],
        "host_ms": round(rec["host_us"] / 1e3, 3),
        "host_ms_per_pass": round(rec["host_us"] / 1e3 / count, 3),
        "launches_per_pass": round(rec["launches"] / count, 1),
        "syncs_per_pass": round(rec["syncs"] / count, 2),
        "by_cause_ms": {k: round(v / 1e3, 3) for k, v in rec["by_cause_us"].most_common()},
    }
