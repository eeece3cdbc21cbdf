"""Counting what a piece of PyTorch code asks of the device: aten ops dispatched and the
host-device synchronisations among them, attributed to a phase label set by the caller.

Every aten op that reaches the dispatcher below autograd, views aside, is about one
kernel launch on CUDA (a composite fallback may make several), so the op count is a
device-free proxy for launches; views (``view``, ``transpose``, ``detach``, ...) launch
nothing and are counted apart. A synchronisation is an op whose result the host must
read before it can go on: a tensor's value as a Python number (``item``, ``bool``,
``int``: ``aten._local_scalar_dense``), an output whose *shape* depends on the data
(``nonzero``, ``masked_select``, boolean-mask indexing, ``repeat_interleave`` without
``output_size``, ``unique``), ``equal``, and copies to host memory (``.cpu()``,
``.tolist()``, ``.numpy()``). On CPU nothing waits, but the same calls wait on CUDA, so the
counts hold on either device. ``Tensor.cpu/tolist/numpy`` do not all reach the dispatcher
as such on a CPU tensor; they are counted by wrapping them while the counter is active.

torch.compile does not run under a dispatch mode, so a compiled region is counted by running
its function eagerly through ``OpCounter.compiled_region``: its ops are the region's, and
each call is one region call (on a GPU, a few fused kernels behind one guard check). Its
backward is one call too: AOTAutograd compiles a region's backward into one graph
(``CompiledFunctionBackward``, one node per region call), so the autograd nodes an eager
call creates are tagged, and the ops they run in the backward are counted as that call's
region ops and one backward region call, not as eager launches.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import traceback
from collections import Counter, defaultdict
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Ops whose every call makes the host wait for the device.
ALWAYS_SYNC = {
    aten._local_scalar_dense.default,  # item(), bool(t), int(t), float(t), t.is_nonzero()
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.equal.default,
}
# Shapes from data unless the caller gives the output size.
REPEAT_INTERLEAVE = {aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor}
# Indexing with a boolean mask is a nonzero first.
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default,
            aten._index_put_impl_.default}
COPIES = {aten._to_copy.default, aten.copy_.default}
# Source files of the project whose frames name a synchronisation's call site.
_ROOT = Path(__file__).resolve().parents[1]
_OWN = tuple(str(_ROOT / d) for d in ("l2a", "kernels", "train"))


def _is_bool_mask(t) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)


def sync_reason(func, args, kwargs) -> str | None:
    """The op's name when this call forces a host-device synchronisation on CUDA, else None."""
    if func in ALWAYS_SYNC:
        return func.overloadpacket.__name__
    if func in REPEAT_INTERLEAVE and kwargs.get("output_size") is None:
        return "repeat_interleave"
    if func in INDEXING and len(args) > 1:
        if any(_is_bool_mask(i) for i in (args[1] or ())):
            return f"{func.overloadpacket.__name__} (boolean mask)"
    if func in COPIES:
        src = args[1] if func is aten.copy_.default else args[0]
        dst_device = args[0].device if func is aten.copy_.default else kwargs.get("device")
        if isinstance(src, torch.Tensor) and src.device.type != "cpu" and dst_device is not None:
            if torch.device(dst_device).type == "cpu":
                return "copy to host"
    return None


def call_site() -> str:
    """The innermost frame in the project's own packages (l2a, kernels, train)."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if frame.filename.startswith(_OWN):
            return f"{Path(frame.filename).relative_to(_ROOT)}:{frame.lineno} {frame.name}"
    return "outside the project"


# Host reads that a CPU tensor serves without dispatching an aten op (a CUDA tensor would
# copy to host first): counted by wrapping the methods while a counter is active.
_HOST_READS = ("cpu", "tolist", "numpy")


def _tensors(out):
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, (tuple, list)):
        for o in out:
            yield from _tensors(o)


def _nodes_created_since(outputs, first_seq: int) -> list:
    """The autograd nodes behind `outputs` created since the thread's sequence number was
    `first_seq`: walked back from the outputs' grad_fns, stopping at older nodes (the
    region's inputs) and at gradient accumulators (parameters; their sequence number is the
    largest there is, so that the engine runs them early)."""
    end = torch.autograd._get_sequence_nr()
    stack = [t.grad_fn for t in _tensors(outputs) if t.grad_fn is not None]
    seen, nodes = {}, []  # id -> node: holding each wrapper keeps its id from being reused
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        if not first_seq <= node._sequence_nr() < end:
            continue
        nodes.append(node)
        stack.extend(fn for fn, _ in node.next_functions)
    return nodes


class OpCounter(TorchDispatchMode):
    """``with OpCounter() as c: c.phase = "forward"; ...`` counts, per phase label, the aten
    ops (views apart) and every synchronising op (with its call site). Ops under a phase of None are
    not counted. ``c.region`` labels ops run inside a compiled region (``compiled_region``:
    the fused elementwise regions, which torch.compile turns into a few kernels, forward and
    backward)."""

    def __init__(self):
        super().__init__()
        self.phase = None
        self.region = None
        self.ops = Counter()  # phase -> aten ops other than views
        self.view_ops = Counter()  # phase -> views (no kernel)
        self.region_ops = Counter()  # phase -> aten ops inside a compiled region
        self.region_calls = Counter()  # phase -> calls of a compiled region (forward or backward)
        self.syncs = defaultdict(Counter)  # phase -> {"op at site": n}
        self._saved = {}
        self._call_ids = itertools.count()
        self._backward_calls_seen = set()  # (region call, graph task) whose backward began
        self._outer_regions = []  # the labels a backward region node's hooks restore

    @contextlib.contextmanager
    def phase_scope(self, label):
        """Ops of the block under phase `label` and outside any region, both restored after:
        a recomputation that activation checkpointing starts from inside a region's backward
        node runs the layer's own (eager and compiled) ops, not that region's."""
        saved = self.phase, self.region
        self.phase, self.region = label, None
        try:
            yield
        finally:
            self.phase, self.region = saved

    def compiled_region(self, fn, name: str | None = None):
        """`fn` as its torch.compile'd region would be counted, run eagerly: one region call
        and its ops as region ops in the forward; in the backward, the nodes the call created
        run as one compiled backward (one region call per call and backward, their ops the
        region's). Use it where the code calls `torch.compile(fn)`."""
        name = name or getattr(fn, "__name__", "region")

        @functools.wraps(fn)
        def call(*args, **kwargs):
            if self.phase is not None:
                self.region_calls[self.phase] += 1
            outer, self.region = self.region, name
            first_seq = torch.autograd._get_sequence_nr()
            try:
                out = fn(*args, **kwargs)
            finally:
                self.region = outer
            if torch.is_grad_enabled():
                self._tag_backward(_nodes_created_since(out, first_seq), name)
            return out

        return call

    def _tag_backward(self, nodes: list, name: str) -> None:
        call_id = next(self._call_ids)
        for node in nodes:
            node.register_prehook(functools.partial(self._enter_backward_region, call_id, name))
            node.register_hook(self._leave_backward_region)

    def _enter_backward_region(self, call_id: int, name: str, grad_outputs) -> None:
        key = (call_id, torch._C._current_graph_task_id())
        if key not in self._backward_calls_seen:
            # The call's first node in this backward: its compiled backward's one call.
            self._backward_calls_seen.add(key)
            if self.phase is not None:
                self.region_calls[self.phase] += 1
        self._outer_regions.append(self.region)
        self.region = name

    def _leave_backward_region(self, grad_inputs, grad_outputs) -> None:
        self.region = self._outer_regions.pop()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.phase is not None and func.is_view:
            self.view_ops[self.phase] += 1
        elif self.phase is not None:
            self.ops[self.phase] += 1
            if self.region is not None:
                self.region_ops[self.phase] += 1
            reason = sync_reason(func, args, kwargs)
            if reason is not None:
                self.syncs[self.phase][f"{reason} at {call_site()}"] += 1
        return func(*args, **kwargs)

    def host_read(self, name: str) -> None:
        if self.phase is not None:
            self.syncs[self.phase][f"Tensor.{name} at {call_site()}"] += 1

    def __enter__(self):
        for name in _HOST_READS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def wrapped(t, *a, _name=name, _original=original, **kw):
                self.host_read(_name)
                return _original(t, *a, **kw)

            setattr(torch.Tensor, name, wrapped)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved.clear()
        return super().__exit__(*exc)

    def summary(self, phase) -> dict:
        sites = dict(sorted(self.syncs[phase].items()))
        return {
            "ops": self.ops[phase],
            "view_ops": self.view_ops[phase],
            "syncs": sum(sites.values()),
            "compiled_region_ops": self.region_ops[phase],
            "compiled_region_calls": self.region_calls[phase],
            # What the host launches on a GPU: the eager ops one kernel each, a compiled
            # region one call (a few fused kernels behind one guard check).
            "launch_proxy": self.ops[phase] - self.region_ops[phase] + self.region_calls[phase],
            "sync_sites": sites,
        }
