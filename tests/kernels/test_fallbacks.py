"""No silent change of backend: the FlexAttention block masks close over tensors only (a
Python number captured by a mask_mod becomes a symbolic scalar under a dynamic-shape
compile, which FlexAttention's FLASH backend rejects), and a FLASH failure is recorded in
kernels/fallbacks.py (or raised under L2A_STRICT_BACKENDS=1), never only warned about."""

from __future__ import annotations

import numbers

import pytest
import torch

from kernels import fallbacks as fb
from kernels.flex_mask import query_block_mask
from kernels.token_sparse import flex


def _captured(fn, seen=None):
    """Every object a function closes over, through nested functions."""
    seen = [] if seen is None else seen
    for cell in fn.__closure__ or ():
        value = cell.cell_contents
        seen.append(value)
        if callable(value) and getattr(value, "__closure__", None):
            _captured(value, seen)
    return seen


@pytest.mark.parametrize("window", [None, 5])
def test_block_mask_mods_close_over_tensors_only(window):
    pos = torch.tensor([[3, 7, 8, 20]], dtype=torch.int32)
    starts = torch.zeros(1, 24, dtype=torch.int32)
    mask = query_block_mask(pos, starts, window, block=4)
    captured = _captured(mask.mask_mod)
    assert captured, "the mask_mod reads the positions and documents it closes over"
    numbers_ = [c for c in captured if isinstance(c, (numbers.Number, torch.SymInt, torch.SymFloat))]
    assert numbers_ == [], f"mask_mod captures Python numbers: {numbers_}"
    assert all(isinstance(c, torch.Tensor) for c in captured), captured


def _failing_flash(calls):
    def compiled(dynamic):
        def fn(q, k, v, mask, scale, gqa, kernel_options):
            calls.append(kernel_options)
            if kernel_options and kernel_options.get("BACKEND") == "FLASH":
                raise RuntimeError("NYI: mask_mod captures a dynamic scalar\nmore")
            return q * 0

        return fn

    return compiled


def test_a_flash_failure_is_recorded_once_and_not_retried(monkeypatch):
    calls = []
    monkeypatch.setattr(flex, "_compiled_flex", _failing_flash(calls))
    monkeypatch.delenv("L2A_STRICT_BACKENDS", raising=False)
    fb.clear_fallbacks()
    q = torch.zeros(1, 2, 4, 8)
    with pytest.warns(UserWarning, match="backend FLASH failed"):
        flex._flex(q, q, q, None, 1.0, flash=True)
    flex._flex(q, q, q, None, 1.0, flash=True)
    assert fb.fallbacks() == [{
        "op": "token_sparse.flex", "intended": "FLASH", "used": "TRITON",
        "reason": "RuntimeError: NYI: mask_mod captures a dynamic scalar",
    }]
    # FLASH tried once; then the default backend for both calls.
    assert [c and c.get("BACKEND") for c in calls] == ["FLASH", None, None]
    fb.clear_fallbacks()


def test_strict_backends_raise_instead(monkeypatch):
    monkeypatch.setattr(flex, "_compiled_flex", _failing_flash([]))
    monkeypatch.setenv("L2A_STRICT_BACKENDS", "1")
    fb.clear_fallbacks()
    q = torch.zeros(1, 2, 4, 8)
    with pytest.raises(RuntimeError, match="dynamic scalar"):
        flex._flex(q, q, q, None, 1.0, flash=True)
    assert fb.fallbacks() == []
