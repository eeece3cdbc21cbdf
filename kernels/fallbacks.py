"""Process-wide record of backend fallbacks: an op that could not run the backend it was
asked for (or that ``auto`` picked) and ran another one.

A fallback keeps a long run alive, but the numbers it produces are not the intended
backend's: benchmarks write ``fallbacks()`` into their results and GPU tests assert that
it is empty. ``L2A_STRICT_BACKENDS=1`` turns a fallback into the original error instead.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Fallback:
    op: str  # which op, e.g. "token_sparse.flex"
    intended: str  # the backend it was asked to run, e.g. "FLASH"
    used: str  # the backend it ran instead, e.g. "TRITON"
    reason: str  # the first line of the error


_RECORDED: list[Fallback] = []


def strict() -> bool:
    return os.environ.get("L2A_STRICT_BACKENDS") == "1"


def record_fallback(op: str, intended: str, used: str, error: BaseException) -> None:
    """Record (and warn about) a fallback; under ``L2A_STRICT_BACKENDS=1`` re-raise
    ``error`` instead (call from the ``except`` block that caught it)."""
    if strict():
        raise error
    reason = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"
    entry = Fallback(op, intended, used, reason)
    if entry not in _RECORDED:
        _RECORDED.append(entry)
        warnings.warn(f"{op}: backend {intended} failed, running {used}: {reason}", stacklevel=3)


def fallbacks() -> list[dict]:
    """Every distinct fallback of this process so far, oldest first."""
    return [asdict(f) for f in _RECORDED]


def has_fallen_back(op: str, intended: str) -> bool:
    return any(f.op == op and f.intended == intended for f in _RECORDED)


def clear_fallbacks() -> None:
    _RECORDED.clear()
