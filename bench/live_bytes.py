"""Peak of the live tensor memory of CPU code, with what was live at the peak.

The CUDA caching allocator reports its peak (``torch.cuda.max_memory_allocated``); the CPU
allocator reports nothing. ``LiveBytes`` is a ``TorchDispatchMode`` that sees every tensor
an operator returns (autograd's backward included: on the CPU it runs in the calling
thread), counts each new storage once (not views or in-place results, which share an
input's) and uncounts it when the storage is freed (a weak reference to the storage).
Storages made before the mode (parameters, inputs) are not counted. Used by the tests to check
where a forward or backward holds more than it must, and to find the moment and the
tensors of a step's peak on a small model whose shape keeps the ratios of a large one.

    with LiveBytes() as live:
        loss = model(x).sum(); loss.backward()
    live.peak, live.at_peak   # bytes; {label: bytes} of what was live then
"""

from __future__ import annotations

import traceback
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    def __init__(self, stack: bool = False, ignore=()):
        """stack: label each storage with the innermost project frames that made it.
        ignore: tensors whose storages are never counted (e.g. the parameters)."""
        super().__init__()
        self.stack = stack
        self.current = 0
        self.peak = 0
        self.peak_label = ""
        self._live: dict[int, tuple[int, str]] = {}
        self._refs: dict[int, object] = {id(t.untyped_storage()): None for t in ignore}
        self._at_peak: dict[int, tuple[int, str]] = {}

    @property
    def at_peak(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n, label in self._at_peak.values():
            out[label] = out.get(label, 0) + n
        return out

    def _label(self, func, t: torch.Tensor) -> str:
        label = f"{func.__name__} {tuple(t.shape)} {str(t.dtype).replace('torch.', '')}"
        if self.stack:
            frames = [f for f in traceback.extract_stack()[:-4]
                      if "/torch/" not in f.filename and "live_bytes.py" not in f.filename]
            label += " @ " + " < ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}"
                                        for f in frames[-3:][::-1])
        return label

    def _count(self, func, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = id(storage)  # storages keep their Python object while alive
        if key in self._refs:
            return
        n = storage.nbytes()

        def freed(_ref, key=key, n=n):
            self.current -= n
            self._live.pop(key, None)
            self._refs.pop(key, None)

        self._refs[key] = weakref.ref(storage, freed)
        label = self._label(func, t)
        self._live[key] = (n, label)
        self.current += n
        if self.current > self.peak:
            self.peak, self.peak_label = self.current, label
            self._at_peak = dict(self._live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # Views and in-place results share an input's storage: not a new allocation.
        inputs = {id(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type == "cpu" and not t.is_meta}
        for t in tree_flatten(out)[0]:
            if (isinstance(t, torch.Tensor) and t.device.type == "cpu" and not t.is_meta
                    and id(t.untyped_storage()) not in inputs):
                self._count(func, t)
        return out
