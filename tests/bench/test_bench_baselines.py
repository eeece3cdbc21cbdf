"""The flash-attn baseline of bench/attention.py, checked on CPU against our reference ops
through a stand-in `flash_attn` module that follows flash-attn's documented contract:
(B, T, H, D) tensors, GQA by head groups, `causal=True` with `window_size=(left, right)`
meaning query i sees keys [i - left, i + right] (-1: unbounded)."""

from __future__ import annotations

import sys
import types

import torch

from bench.attention import flash_attn_available, flash_attn_dense
from kernels import sliding_window_attention_naive


def _flash_attn_func(q, k, v, causal=False, window_size=(-1, -1)):
    B, T, Hq, D = q.shape
    k = k.repeat_interleave(Hq // k.shape[2], dim=2)
    v = v.repeat_interleave(Hq // v.shape[2], dim=2)
    s = torch.einsum("bihd,bjhd->bhij", q, k) * D**-0.5
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    left, right = window_size
    allowed = torch.ones(T, T, dtype=torch.bool)
    if causal:
        allowed &= j <= i
    if left >= 0:
        allowed &= j >= i - left
    if right >= 0:
        allowed &= j <= i + right
    p = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.einsum("bhij,bjhd->bihd", p, v)


def test_flash_attn_baseline_layout_window_and_gqa(monkeypatch):
    monkeypatch.setitem(
        sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_func=_flash_attn_func)
    )
    assert flash_attn_available()
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, 50, 16, generator=g)
    k, v = (torch.randn(2, 2, 50, 16, generator=g) for _ in range(2))
    for window in (7, None):
        got = flash_attn_dense(window)(q, k, v)
        want = sliding_window_attention_naive(q, k, v, window or 50)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_flash_attn_absent_is_skipped_not_an_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import raises ImportError
    assert not flash_attn_available()


def test_interrupted_table_keeps_the_records_measured_so_far(monkeypatch, tmp_path, capsys):
    """`timeout -s INT` on the benchmark (the fast-path device script) must still leave a
    JSON with every record finished before the interrupt, marked as interrupted."""
    import json

    import bench.attention as ba

    done = {"kernel": "sdpa_cudnn", "seq_len": 1024, "fraction": 1.0, "pass": "fwd", "ms": 1.0,
            "useful_tflops": 1.0}

    def table(lengths, fractions, passes, kernels, records):
        records.append(done)
        raise KeyboardInterrupt

    monkeypatch.setattr(ba.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ba, "environment", lambda: {"gpu": "G", "torch": "t", "triton": "t",
                                                    "date": "2026-11-30T00:00:00"})
    monkeypatch.setattr(ba, "run_table", table)
    out = tmp_path / "a.json"
    ba.main(["--lengths", "1024", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["interrupted"] is True and result["records"] == [done]
    assert "| 1K | fwd | sdpa_cudnn |" in capsys.readouterr().out


def test_time_with_retry_keeps_the_first_error_and_gives_up_after_two():
    from bench.attention import time_with_retry

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("cold compile failed")
        return 12.5

    ms, errors = time_with_retry(flaky, "flaky")
    assert ms == 12.5 and len(calls) == 2
    assert errors == ["RuntimeError: cold compile failed"]

    def broken():
        calls.append(1)
        raise ValueError("never works")

    calls.clear()
    ms, errors = time_with_retry(broken, "broken")
    assert ms is None and len(calls) == 2 and len(errors) == 2
    assert time_with_retry(lambda: 3.0, "fine") == (3.0, [])
