"""Which implementation runs an attention op: per branch, per device, per input.

    torch   the pure-PyTorch reference (any device; the CPU path)
    triton  our compacted-query Triton kernels (CUDA, or TRITON_INTERPRET=1 on CPU)
    flex    FlexAttention (torch.compile'd, its default Triton backend)
    fa4     FlashAttention-4 (package `flash-attn-4`, `flash_attn.cute`): the local branch
            through its windowed (varlen) kernel, the token-sparse branch through
            FlexAttention's `BACKEND="FLASH"`, which runs FlashAttention-4 with a block mask
    auto    sliding window: fa4 on Hopper / Blackwell where `flash-attn-4` imports and the
            input suits it (fp16 / bf16, head dim a multiple of 8 and <= 128, or <= 256 on
            Hopper); triton on other CUDA devices; torch elsewhere.
            token-sparse: triton on CUDA, torch elsewhere. FlexAttention's FLASH backend
            (`fa4`) stays an explicit choice until its fixed compile path has passed the GPU
            tests (its first GPU run failed in inductor lowering; docs/KERNELS.md).

`flash_attn.cute` is imported lazily and only on CUDA devices: CPU installs never need it.
"""

from __future__ import annotations

import functools
import os

import torch

from .utils import resolve_backend as _resolve_torch_triton

BACKENDS = ("auto", "torch", "triton", "flex", "fa4")
FA4_DTYPES = (torch.float16, torch.bfloat16)


@functools.cache
def fa4_installed() -> bool:
    """`flash_attn.cute` imports (set L2A_DISABLE_FA4=1 to pretend it does not)."""
    if os.environ.get("L2A_DISABLE_FA4") == "1":
        return False
    try:
        import flash_attn.cute  # noqa: F401
    except Exception:  # noqa: BLE001  (an ImportError, or a CUDA-DSL error on import)
        return False
    return True


def fa4_suits(q: torch.Tensor) -> bool:
    """Hopper (sm90) or Blackwell (sm100) tensors FlashAttention-4 takes as they are."""
    if not q.is_cuda or q.dtype not in FA4_DTYPES:
        return False
    major = torch.cuda.get_device_capability(q.device)[0]
    D = q.shape[-1]
    if major not in (9, 10) or D % 8:
        return False
    return D <= (256 if major == 9 else 128) and fa4_installed()


def resolve(backend: str, q: torch.Tensor, token_sparse: bool = False) -> str:
    """The backend that runs `q`'s op: `auto` resolved, explicit choices checked."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if not token_sparse and fa4_suits(q):
            return "fa4"
        return _resolve_torch_triton("auto", q)
    if backend == "fa4":
        if not fa4_installed():
            raise ValueError("backend='fa4': needs the flash-attn-4 package (flash_attn.cute)")
        if not fa4_suits(q):
            raise ValueError(
                "backend='fa4': needs fp16/bf16 CUDA tensors on Hopper or Blackwell with a "
                f"head dim that is a multiple of 8, got {q.dtype} on {q.device}, head dim {q.shape[-1]}"
            )
        return backend
    if backend == "flex":
        return backend
    return _resolve_torch_triton(backend, q)

