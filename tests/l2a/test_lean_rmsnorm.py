"""LeanRMSNorm (l2a/rmsnorm.py) against transformers' Qwen3RMSNorm: the same forward values,
the same gradients, and only its input (plus a per-row fp32 scalar) saved for backward."""

from __future__ import annotations

import pytest
import torch
from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

import l2a.rmsnorm as rmsnorm
from l2a.rmsnorm import LeanRMSNorm


def _pair(width, dtype, seed=0):
    torch.manual_seed(seed)
    ref = Qwen3RMSNorm(width, eps=1e-6).to(dtype)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
    lean = LeanRMSNorm(width, eps=1e-6).to(dtype)
    lean.load_state_dict(ref.state_dict())
    return ref, lean


# Both norms compute in fp32 whatever the input dtype (fp64 included), so fp32 tolerances.
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-5),
                                       (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("shape,chunk_rows", [((2, 13, 24), 5), ((1, 7, 3, 8), 4), ((3, 24), 1000)])
def test_same_values_and_gradients(monkeypatch, dtype, tol, shape, chunk_rows):
    # Several chunks of rows with a short last one, or a single chunk.
    monkeypatch.setattr(rmsnorm, "CHUNK_ELEMENTS", chunk_rows * shape[-1])
    ref, lean = _pair(shape[-1], dtype)
    x = (torch.randn(shape, dtype=torch.float64) * 3).to(dtype).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = lean(x), ref(x_ref)
    assert y.dtype == y_ref.dtype
    assert torch.equal(y, y_ref)  # the same fp32 operations: the same bits
    g = torch.randn(shape, dtype=torch.float64).to(dtype)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(lean.weight.grad, ref.weight.grad, rtol=tol, atol=tol * 10)


def test_saves_only_the_input_and_one_scalar_per_row():
    _, lean = _pair(32, torch.bfloat16)
    x = torch.randn(2, 9, 32, dtype=torch.bfloat16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        lean(x)
    big = [t for t in saved if t.numel() == x.numel()]
    assert len(big) == 1 and big[0].dtype == torch.bfloat16
    assert big[0].untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    assert sum(t.numel() for t in saved if t.numel() != x.numel()) == 2 * 9 + 32  # rstd, weight


def test_no_grad_path_matches():
    ref, lean = _pair(16, torch.bfloat16)
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(lean(x), ref(x))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape", [(1, 40_000, 4096), (1, 333, 32, 128)])
def test_cuda_bf16_against_transformers(shape):
    """On the GPU in bf16 at Qwen3-8B widths (several chunks of rows, a short last one):
    the values within one bf16 rounding, the gradients as close as two bf16 computations."""
    ref, lean = (m.cuda() for m in _pair(shape[-1], torch.bfloat16))
    x = (torch.randn(shape, device="cuda") * 2).to(torch.bfloat16).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = lean(x), ref(x_ref)
    torch.testing.assert_close(y, y_ref, rtol=1e-2, atol=1e-2)
    assert (y != y_ref).float().mean() < 1e-3  # the same fp32 arithmetic: nearly all equal
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(lean.weight.grad.float(), ref.weight.grad.float(),
                               rtol=2e-2, atol=2e-2 * shape[-2] ** 0.5)
