"""Stand-ins for the GPU attention kernels, so that the host code around them runs on CPU.

On a Hopper GPU the L2A layer's attention goes to FlashAttention-4 (the local branch and
the dense-path forward, `kernels/sliding_window/fa4.py`) and to FlexAttention's FLASH
backend on the compacted routed queries (`kernels/token_sparse/flex.py`). Everything around
those calls (document boundaries, routed-row compaction, block masks, layout changes) is
ordinary PyTorch that runs, and can be counted, on CPU. Inside `gpu_attention_stand_ins()`
the backends resolve as on such a GPU, and each kernel call is replaced by one op per
output (forward: the output; backward: dq, dk, dv), roughly the launches the real kernels
make. The values are not attention: only counts are meaningful under the stand-ins.
"""

from __future__ import annotations

import contextlib
import sys
import types

import torch


class _KernelStandIn(torch.autograd.Function):
    """One op forward (the output, shaped like q), one op per input gradient backward."""

    @staticmethod
    def forward(ctx, q, k, v):
        ctx.shapes = (k.shape, v.shape)
        return q.clone()

    @staticmethod
    def backward(ctx, grad):
        k_shape, v_shape = ctx.shapes
        return grad.clone(), grad.new_zeros(k_shape), grad.new_zeros(v_shape)


def fake_flash_attn_cute(calls: list | None = None) -> types.ModuleType:
    """A `flash_attn.cute` module whose entries record their keyword arguments in `calls`
    and return `(out, None)` like FlashAttention-4's."""

    def entry(name):
        def fn(q, k, v, **kwargs):
            if calls is not None:
                calls.append((name, kwargs))
            return _KernelStandIn.apply(q, k, v), None

        return fn

    cute = types.ModuleType("flash_attn.cute")
    cute.flash_attn_func = entry("flash_attn_func")
    cute.flash_attn_varlen_func = entry("flash_attn_varlen_func")
    return cute


@contextlib.contextmanager
def gpu_attention_stand_ins(calls: list | None = None):
    """Backends resolve as on a Hopper GPU with flash-attn-4 (`auto` -> `fa4`); the
    FlashAttention-4 and FlexAttention kernel calls are stand-ins (module docstring)."""
    import kernels.backends as backends
    import kernels.token_sparse.flex as flex

    cute = fake_flash_attn_cute(calls)
    pkg = types.ModuleType("flash_attn")
    pkg.cute = cute
    saved_modules = {name: sys.modules.get(name) for name in ("flash_attn", "flash_attn.cute")}
    saved = (backends.fa4_suits, backends.fa4_installed, flex._flex)
    sys.modules["flash_attn"], sys.modules["flash_attn.cute"] = pkg, cute
    backends.fa4_suits = lambda q: True
    backends.fa4_installed = lambda: True
    flex._flex = lambda q, k, v, mask, scale, flash: _KernelStandIn.apply(q, k, v)
    try:
        yield
    finally:
        backends.fa4_suits, backends.fa4_installed, flex._flex = saved
        for name, module in saved_modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
