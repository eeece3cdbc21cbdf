"""Shared helpers of the attention ops: document ids, input checks, chunk sizing."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.weak import WeakTensorKeyDictionary

# Elements of one fp32 score block in the chunked pure-PyTorch ops (~64 MiB per copy):
# bounds peak memory independently of the sequence length.
SCORE_BUDGET = 1 << 24


def doc_ids_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Document ids `(B, T)` int32 from position ids that restart at every document.

    A new document starts at `t = 0` and wherever `position_ids[t] != position_ids[t-1] + 1`.
    Accepts `(T,)` (treated as batch 1) or `(B, T)`.
    """
    if position_ids.dim() == 1:
        position_ids = position_ids.unsqueeze(0)
    if position_ids.dim() != 2:
        raise ValueError(
            f"position_ids: expected shape (B, T) or (T,), got {tuple(position_ids.shape)}"
        )
    if position_ids.is_floating_point() or position_ids.dtype == torch.bool:
        raise ValueError(f"position_ids: expected an integer tensor, got {position_ids.dtype}")
    starts = torch.ones_like(position_ids, dtype=torch.int32)
    if position_ids.shape[1] > 1:
        starts[:, 1:] = (position_ids[:, 1:] != position_ids[:, :-1] + 1).to(torch.int32)
    return torch.cumsum(starts, dim=1, dtype=torch.int32) - 1


# Facts derived from a tensor once and reused by every later call on the same tensor (the
# document ids and a layer's routing decisions are shared by many kernel calls of a step):
# tensor -> {name: (tensor version when derived, value)}. Weak keys: an entry goes with its
# tensor; a value must not hold the tensor itself.
_DERIVED = WeakTensorKeyDictionary()


def derived(t: torch.Tensor, name: str, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``fn(t)``, computed at the first call for this tensor and remembered: later calls on
    the same tensor object (unchanged in place since) return the same value. For facts
    that cost a host synchronisation or many launches and that every layer of a forward
    would otherwise derive again from the same ``doc_ids`` or route. Inference tensors
    (no version counter) are not remembered."""
    if t.is_inference():
        return fn(t)
    facts = _DERIVED.setdefault(t, {})
    hit = facts.get(name)
    if hit is not None and hit[0] == t._version:
        return hit[1]
    value = fn(t)
    facts[name] = (t._version, value)
    return value


def known(t: torch.Tensor, name: str) -> Any:
    """The fact ``name`` of ``t`` if derived or remembered (and ``t`` unchanged since), else
    None; computes nothing."""
    if t.is_inference():
        return None
    hit = _DERIVED.get(t, {}).get(name)
    return hit[1] if hit is not None and hit[0] == t._version else None


def remember(t: torch.Tensor, name: str, value: Any) -> None:
    """Give ``t`` a derived fact known otherwise (e.g. carried over from an identical tensor)."""
    if t.is_inference():
        return
    _DERIVED.setdefault(t, {})[name] = (t._version, value)


def doc_start_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """For every position, the first position of its document (`(B, T)` int32).

    Documents are contiguous (DESIGN.md), so this is a running max of the positions where
    the id changes; computed on the tensors' device without host synchronisation.
    """
    B, T = doc_ids.shape
    pos = torch.arange(T, device=doc_ids.device, dtype=torch.int32).expand(B, T)
    change = torch.ones_like(doc_ids, dtype=torch.bool)
    if T > 1:
        change[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    marked = torch.where(change, pos, torch.zeros_like(pos))
    return torch.cummax(marked, dim=1).values.to(torch.int32)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int, int]:
    """Validate `(B, H, T, D)` q/k/v with GQA; returns `(B, Hq, Hkv, T, D)` with T the number
    of queries. k/v may be longer than q (`Tk >= Tq`): the queries are then the last `Tq`
    positions of the key sequence (a chunk or decoding step against a KV cache)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name}: expected a tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name}: expected shape (B, H, T, D), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    B, Hq, T, D = q.shape
    if k.shape != v.shape:
        raise ValueError(
            f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}"
        )
    if k.shape[0] != B or k.shape[2] < T or k.shape[3] != D:
        raise ValueError(
            f"k/v shape {tuple(k.shape)} does not match q shape {tuple(q.shape)} "
            "in batch or head dim, or has fewer keys than queries"
        )
    Hkv = k.shape[1]
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.device != k.device or q.device != v.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    return B, Hq, Hkv, T, D


def check_doc_ids(doc_ids: torch.Tensor | None, B: int, T: int, device: torch.device) -> None:
    """`doc_ids` label the keys: `(B, Tk)`, also when the queries are only the last ones."""
    if doc_ids is None:
        return
    if not isinstance(doc_ids, torch.Tensor) or doc_ids.shape != (B, T):
        shape = (
            tuple(doc_ids.shape) if isinstance(doc_ids, torch.Tensor) else type(doc_ids).__name__
        )
        raise ValueError(f"doc_ids: expected shape (B, T) = ({B}, {T}), got {shape}")
    if doc_ids.is_floating_point() or doc_ids.dtype == torch.bool:
        raise ValueError(f"doc_ids: expected an integer tensor, got {doc_ids.dtype}")
    if doc_ids.device != device:
        raise ValueError(f"doc_ids: on {doc_ids.device}, expected {device} (the device of q)")


def check_route(route: torch.Tensor, B: int, T: int, device: torch.device) -> None:
    if not isinstance(route, torch.Tensor) or route.shape != (B, T):
        shape = tuple(route.shape) if isinstance(route, torch.Tensor) else type(route).__name__
        raise ValueError(f"route: expected shape (B, T) = ({B}, {T}), got {shape}")
    if route.dtype != torch.bool:
        raise ValueError(f"route: expected a bool tensor, got {route.dtype}")
    if route.device != device:
        raise ValueError(f"route: on {route.device}, expected {device} (the device of q)")


KERNEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
KERNEL_MAX_HEAD_DIM = 256


def resolve_backend(backend: str, q: torch.Tensor) -> str:
    """`auto` -> `triton` on CUDA tensors the kernels support, `torch` otherwise.

    Explicit `triton` with an unsupported dtype or head dim is a ValueError; fp32 inputs
    run the kernels' matmuls in TF32.
    """
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend: expected 'auto', 'torch' or 'triton', got {backend!r}")
    supported = q.dtype in KERNEL_DTYPES and q.shape[-1] <= KERNEL_MAX_HEAD_DIM
    if backend == "auto":
        return "triton" if q.is_cuda and supported else "torch"
    if backend == "triton":
        if not supported:
            raise ValueError(
                f"backend='triton': needs bf16/fp16/fp32 and head dim <= {KERNEL_MAX_HEAD_DIM}, "
                f"got {q.dtype} and head dim {q.shape[-1]}"
            )
        if not (q.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
            raise ValueError("backend='triton': needs CUDA tensors (or TRITON_INTERPRET=1 on CPU)")
    return backend


def default_scale(scale: float | None, D: int) -> float:
    if scale is None:
        return D**-0.5
    scale = float(scale)
    if not scale > 0:
        raise ValueError(f"scale: expected a positive number, got {scale}")
    return scale


# Dynamo's recompile limit (8 by default) counts the cache entries of one code object. Our
# compiled FlexAttention calls get an entry per shape family (head counts, head dim, dtype,
# FLASH backend or not, a routed count under one block padded or not), so a process that
# runs several shapes (a GPU test session, the evaluation of several models) passes 8, and
# under fullgraph=True that is a hard error (FailOnRecompileLimitHit, seen on an H200 in a
# test session of the fast path, 2026-12-01).
FLEX_RECOMPILE_LIMIT = 64


def allow_recompiles(limit: int = FLEX_RECOMPILE_LIMIT) -> None:
    """Raise dynamo's per-code-object recompile limit to `limit`. It is a global setting
    (dynamo has none per function), so it is only ever raised: a user's higher one stands."""
    import torch._dynamo.config as dynamo_config

    if dynamo_config.recompile_limit < limit:
        dynamo_config.recompile_limit = limit
