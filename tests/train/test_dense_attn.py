"""`model.dense_attn_implementation=auto`: FlashAttention-4 only where it can run."""

from __future__ import annotations

import copy

import pytest
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


def _packed_vs_each_document(impl, device, dtype, tol):
    """A packed row of three documents (odd lengths, GQA; documents by restarting position
    ids, as the loader emits them) through `impl` against each document alone through SDPA:
    logits and every parameter's gradient. Each model gets its own config: `_from_config`
    writes the attention implementation into the config object it is given, so a shared one
    would leave both models on the last implementation named."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=301, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                      max_position_embeddings=2048)
    torch.manual_seed(0)
    models = {name: Qwen3ForCausalLM._from_config(copy.deepcopy(cfg), attn_implementation=name,
                                                  dtype=dtype).to(device)
              for name in (impl, "sdpa")}
    assert {n: m.config._attn_implementation for n, m in models.items()} == {impl: impl, "sdpa": "sdpa"}
    models["sdpa"].load_state_dict(models[impl].state_dict())
    lengths = [300, 77, 500] if device == "cuda" else [30, 7, 50]
    gen = torch.Generator(device=device).manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (1, sum(lengths)), device=device, generator=gen)
    weights = torch.randn(1, sum(lengths), cfg.vocab_size, device=device, generator=gen)
    starts = [sum(lengths[:i]) for i in range(len(lengths))]

    def run(name, spans):
        model = models[name]
        model.zero_grad(set_to_none=True)
        # use_cache=False as in the trainer: with a cache transformers does not derive the
        # document mask from the position ids.
        logits = torch.cat([model(ids[:, s:e], position_ids=pos, use_cache=False).logits
                            for s, e, pos in spans], dim=1)
        (logits.float() * weights).sum().backward()
        return logits.float(), {n: p.grad.float() for n, p in model.named_parameters()}

    packed_pos = torch.cat([torch.arange(n, device=device) for n in lengths]).unsqueeze(0)
    got, got_grads = run(impl, [(0, sum(lengths), packed_pos)])
    want, want_grads = run("sdpa", [(s, s + n, torch.arange(n, device=device).unsqueeze(0))
                                    for s, n in zip(starts, lengths)])
    assert (got - want).norm() <= tol * want.norm()
    for name, g in want_grads.items():
        assert (got_grads[name] - g).norm() <= 1.5 * tol * g.norm() + 1e-4, name


def test_packed_row_check_on_cpu():
    """The check itself, on CPU with eager attention (what must hold for any implementation)."""
    _packed_vs_each_document("eager", "cpu", torch.float32, 1e-4)


@pytest.mark.gpu
def test_gpu_auto_dense_runs_flash_attention_4_like_sdpa_per_document():
    """The dense baseline on an H100/H200 with flash-attn-4: `auto` gives FlashAttention-4,
    transformers finds the package itself (else it would fetch a hub kernel), and a packed
    row (documents by position ids) gives each document's own SDPA logits and gradients."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] not in (9, 10):
        pytest.skip("needs a Hopper or Blackwell GPU")
    from kernels.backends import fa4_installed

    if not fa4_installed():
        pytest.skip("flash-attn-4 is not installed")
    from transformers.utils import is_flash_attn_4_available

    assert is_flash_attn_4_available()
    assert dense_attn_implementation("auto", torch.bfloat16) == "flash_attention_4"
    _packed_vs_each_document("flash_attention_4", "cuda", torch.bfloat16, 2e-2)
