"""The optional kernel paths of `kernels.flash.config.LaunchConfig` against the reference:
K/V through TMA tensor descriptors, and compacted q/dO copies for the dK/dV pass (through
pointers or descriptors), and the plain pointer path with every flag off.

Both ops that use the kernels are checked: token-sparse attention and the sliding window.
On CPU the interpreter runs them with its small tiles; the `gpu` cases patch the GPU
launch configs of all three passes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from test_sliding_window import _check_triton as _check_window
from test_token_sparse_triton import _check_kernels

from kernels.flash import config as flash_config
from kernels.flash.host import _descriptor

VARIANTS = {
    # Every flag off: the pointer path. The shipped head-dim-128 configs use descriptors
    # and compacted copies, so without this case no GPU test would run that path at
    # D=128 (which GPUs without TMA, and unaligned K/V, take).
    "plain": {f: False for f in ("kv_desc", "kv_reload", "compact", "compact_desc", "atomic_dq")},
    "kv_desc": {"kv_desc": True},
    "compact": {"compact": True},
    "compact_desc": {"compact": True, "compact_desc": True},
    "kv_reload": {"kv_reload": True},
    "kv_reload_desc": {"kv_reload": True, "kv_desc": True, "compact": True},
    "all": {"kv_desc": True, "compact": True, "compact_desc": True},
    "atomic_dq": {"atomic_dq": True},
    "atomic_dq_all": {"atomic_dq": True, "kv_reload": True, "kv_desc": True, "compact": True},
}

# (route kind, T, Hq, Hkv, D, documents per row): odd lengths, GQA, a head dim below its
# power-of-two tile (descriptor zero-fill along D), several documents.
CPU_CASES = [("random", 63, 4, 1, 24, 2), ("random", 130, 8, 2, 16, 3), ("all", 70, 2, 2, 16, 1)]
# Few shapes per variant: every variant compiles its own kernels, and the GPU suite should
# stay near 10 minutes with the rest of tests/kernels.
# T=63 is shorter than one key tile: the TMA box is larger than the tensor.
GPU_CASES = [
    ("random", 1000, 32, 8, 128, 3),
    ("mixed", 500, 28, 4, 64, 1),
    ("all", 63, 8, 2, 128, 2),
]


def _patch(monkeypatch, changes: dict, gpu: bool) -> None:
    if gpu:
        for key, cfg in list(flash_config.GPU_CONFIGS.items()):
            monkeypatch.setitem(flash_config.GPU_CONFIGS, key, replace(cfg, **changes))
    else:
        monkeypatch.setattr(
            flash_config, "INTERPRET_CONFIG", replace(flash_config.INTERPRET_CONFIG, **changes)
        )


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "-".join(map(str, c)))
def test_variant_matches_reference_interpreted(variant, case, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("interpreter variant")
    _patch(monkeypatch, VARIANTS[variant], gpu=False)
    _check_kernels(*case, gpu=False)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "-".join(map(str, c)))
def test_variant_matches_reference_gpu(variant, case, monkeypatch):
    _patch(monkeypatch, VARIANTS[variant], gpu=True)
    _check_kernels(*case, gpu=True)


def test_descriptor_only_where_the_copy_engine_can_address_it():
    if torch.cuda.is_available():
        pytest.skip("interpreter: every device counts as TMA-capable")
    k = torch.randn(2, 3, 50, 24)
    assert _descriptor(k, [1, 1, 16, 32]).shape == [2, 3, 50, 24]
    # The HF layout transposed: strided, still 16-byte rows.
    kt = torch.randn(2, 50, 3, 24).transpose(1, 2)
    assert _descriptor(kt, [1, 1, 16, 32]).strides == list(kt.stride())
    # 18 fp32 = 72-byte rows: not a multiple of 16 bytes, so the pointer path is used.
    assert _descriptor(torch.randn(2, 3, 50, 18), [1, 1, 16, 32]) is None
    # A base that is not 16-byte aligned.
    assert (
        _descriptor(torch.randn(2 * 3 * 50 * 24 + 1)[1:].view(2, 3, 50, 24), [1, 1, 16, 32]) is None
    )


# The local branch runs the same kernels with a finite window: (T, Hq, Hkv, D, docs, window).
WINDOW_CPU_CASES = [(90, 4, 1, 16, 3, 20), (70, 4, 2, 24, 1, 7)]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("case", WINDOW_CPU_CASES, ids=lambda c: "-".join(map(str, c)))
def test_variant_sliding_window_interpreted(variant, case, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("interpreter variant")
    _patch(monkeypatch, VARIANTS[variant], gpu=False)
    _check_window(*case, gpu=False)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_sliding_window_gpu(variant, monkeypatch):
    _patch(monkeypatch, VARIANTS[variant], gpu=True)
    _check_window(1000, 32, 8, 128, 3, 64, gpu=True)
