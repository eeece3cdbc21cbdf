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
            token-sparse: fa4 (FlexAttention's FLASH backend on the compacted queries) on
            Hopper / Blackwell where `flash-attn-4` imports, for head dims up to 128 (the
            ones its GPU tests cover); triton on other CUDA devices; torch elsewhere.
            On an H200 at 128K / 20% routed, fwd+bwd: fa4 177 ms, triton 227 ms
            (docs/BENCHMARKS.md).

`flash_attn.cute` is imported lazily and only on CUDA devices: CPU installs never need it.
FlashAttention-4 compiles its kernels at the first call of each configuration (seconds
each); its persistent compile cache is on by default here (`fa4_cache_defaults`), so later
runs load them from disk.
"""

from __future__ import annotations

import functools
import os

import torch

from .utils import resolve_backend as _resolve_torch_triton

BACKENDS = ("auto", "torch", "triton", "flex", "fa4")
FA4_DTYPES = (torch.float16, torch.bfloat16)
# The token-sparse FLASH path's GPU tests cover head dims 64 and 128; larger ones keep Triton.
FA4_TOKEN_SPARSE_MAX_HEAD_DIM = 128


FA4_CACHE_ENABLED = "FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED"
FA4_CACHE_DIR = "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"


def fa4_cache_defaults() -> None:
    """FlashAttention-4's persistent compile cache on, under the user's cache directory
    (`$XDG_CACHE_HOME` or `~/.cache`, then `l2a/flash_attention_cute`); a variable the user
    set stays as set (`FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=0` turns the cache off).
    flash_attn.cute reads them when it is imported: call this first."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    os.environ.setdefault(FA4_CACHE_ENABLED, "1")
    os.environ.setdefault(FA4_CACHE_DIR, os.path.join(base, "l2a", "flash_attention_cute"))


# Set on import of the framework's kernels, so that any later import of flash_attn.cute
# (ours, or transformers' flash_attention_4 for the dense baseline) sees them.
fa4_cache_defaults()


@functools.cache
def fa4_installed() -> bool:
    """`flash_attn.cute` imports (set L2A_DISABLE_FA4=1 to pretend it does not)."""
    if os.environ.get("L2A_DISABLE_FA4") == "1":
        return False
    fa4_cache_defaults()
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
        if fa4_suits(q) and (not token_sparse or q.shape[-1] <= FA4_TOKEN_SPARSE_MAX_HEAD_DIM):
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

