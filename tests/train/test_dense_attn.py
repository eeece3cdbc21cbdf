"""`model.dense_attn_implementation=auto`: FlashAttention-4 only where it can run."""

from __future__ import annotations

import torch

from train.build_model import dense_attn_implementation


def test_explicit_choice_passes_through():
    assert dense_attn_implementation("eager", torch.bfloat16) == "eager"
    assert dense_attn_implementation("flash_attention_4", torch.float32) == "flash_attention_4"


def test_auto_is_sdpa_without_a_hopper_gpu_or_in_fp32(monkeypatch):
    assert dense_attn_implementation("auto", torch.float32) == "sdpa"
    # A Hopper GPU with flash-attn-4 importable: FA4 in bf16, still SDPA in fp32.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr("kernels.backends.fa4_installed", lambda: True)
    assert dense_attn_implementation("auto", torch.bfloat16) == "flash_attention_4"
    assert dense_attn_implementation("auto", torch.float32) == "sdpa"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))  # A100
    assert dense_attn_implementation("auto", torch.bfloat16) == "sdpa"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr("kernels.backends.fa4_installed", lambda: False)
    assert dense_attn_implementation("auto", torch.bfloat16) == "sdpa"
