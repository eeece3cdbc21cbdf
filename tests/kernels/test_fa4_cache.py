"""FlashAttention-4's persistent compile cache is on by default, set before flash_attn.cute
is imported, and the varlen call's compile-relevant lengths do not follow each batch's
packing. Checked with stand-in flash_attn packages (the real one needs Hopper / Blackwell)."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from kernels import backends
from kernels.sliding_window.fa4 import sliding_window_attention_fa4

ENABLED, DIR = backends.FA4_CACHE_ENABLED, backends.FA4_CACHE_DIR


@pytest.fixture
def stand_in_package(tmp_path, monkeypatch):
    """A flash_attn package on sys.path whose cute module records the cache variables it
    sees when imported (as the real one reads them then)."""
    root = tmp_path / "pkgs"
    (root / "flash_attn" / "cute").mkdir(parents=True)
    (root / "flash_attn" / "__init__.py").write_text("")
    (root / "flash_attn" / "cute" / "__init__.py").write_text(textwrap.dedent(f"""
        import os
        SEEN = {{k: os.environ.get(k) for k in ({ENABLED!r}, {DIR!r})}}
    """))
    monkeypatch.syspath_prepend(str(root))
    for name in ("flash_attn", "flash_attn.cute"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.delenv("L2A_DISABLE_FA4", raising=False)
    backends.fa4_installed.cache_clear()
    yield
    backends.fa4_installed.cache_clear()


def test_cache_on_under_the_user_cache_dir_before_the_import(stand_in_package, monkeypatch, tmp_path):
    monkeypatch.delenv(ENABLED, raising=False)
    monkeypatch.delenv(DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert backends.fa4_installed()
    seen = sys.modules["flash_attn.cute"].SEEN
    assert seen == {ENABLED: "1", DIR: str(tmp_path / "cache" / "l2a" / "flash_attention_cute")}


def test_the_users_settings_stay(stand_in_package, monkeypatch, tmp_path):
    monkeypatch.setenv(ENABLED, "0")
    monkeypatch.setenv(DIR, str(tmp_path / "mine"))
    assert backends.fa4_installed()
    assert sys.modules["flash_attn.cute"].SEEN == {ENABLED: "0", DIR: str(tmp_path / "mine")}


def test_varlen_lengths_are_the_row_length_whatever_the_packing(monkeypatch):
    from bench.kernel_stand_ins import fake_flash_attn_cute

    calls = []
    cute = fake_flash_attn_cute(calls)
    monkeypatch.setitem(sys.modules, "flash_attn.cute", cute)
    T = 48
    q = torch.randn(2, 4, T, 16)
    k = v = torch.randn(2, 2, T, 16)
    for lengths in ([(20, 28), (48,)], [(5, 5, 38), (30, 18)]):
        doc_ids = torch.stack([torch.cat([torch.full((n,), i) for i, n in enumerate(row)])
                               for row in lengths])
        sliding_window_attention_fa4(q, k, v, 8, doc_ids, 0.25)
    assert [c[1]["max_seqlen_q"] for c in calls] == [T, T]
    assert [c[1]["max_seqlen_k"] for c in calls] == [T, T]
