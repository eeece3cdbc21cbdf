"""What the FlashAttention-4 window path asks of `flash_attn.cute`, checked on CPU with a
stand-in module that records the call (the real kernels need Hopper / Blackwell).

A window shorter than the row is FlashAttention-4's local attention, `(window - 1, 0)`; a
window covering the row is plain causal attention and must be asked for as such (left None):
FlashAttention-4 treats any left window as local and picks smaller key tiles for it."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from kernels.sliding_window.fa4 import sliding_window_attention_fa4


@pytest.fixture
def calls(monkeypatch):
    seen = []

    def fake(name):
        def fn(q, *args, **kwargs):
            seen.append((name, kwargs["window_size"], kwargs["causal"]))
            return (torch.zeros_like(q),)
        return fn

    cute = types.ModuleType("flash_attn.cute")
    cute.flash_attn_func = fake("dense")
    cute.flash_attn_varlen_func = fake("varlen")
    pkg = types.ModuleType("flash_attn")
    pkg.cute = cute
    monkeypatch.setitem(sys.modules, "flash_attn", pkg)
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    return seen


@pytest.mark.parametrize("docs", [False, True])
def test_window_sizes_asked_of_flash_attention_4(calls, docs):
    T = 37
    q = torch.randn(1, 4, T, 16)
    k = v = torch.randn(1, 2, T, 16)
    doc_ids = torch.cat([torch.zeros(20), torch.ones(T - 20)]).long()[None] if docs else None
    entry = "varlen" if docs else "dense"
    for window, expected in [(8, (7, 0)), (T - 1, (T - 2, 0)), (T, (None, 0)), (10 * T, (None, 0))]:
        calls.clear()
        out = sliding_window_attention_fa4(q, k, v, window, doc_ids, 0.25)
        assert out.shape == q.shape
        assert calls == [(entry, expected, True)], window
