"""The one way a setting is checked: each check names the override path of the field
(``model.base``, ``data.sources.0.weight``: what a user types after ``python -m train``) in a
one-line :class:`~l2a.errors.ConfigError`.

Numbers are finite wherever they are read (a NaN passes every ``<`` and ``>`` comparison, so
a range check alone lets it through). The L2A layer's fields are checked here once, for the
trainer's ``l2a.*``, a converted model's ``l2a_*`` config fields and the evaluation's
``model.window``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

from l2a.errors import ConfigError

_UNSET = object()


def fail(path: str, msg: str, value: Any = _UNSET) -> NoReturn:
    """Raise ``<path>: <msg>[, got <value>]``."""
    raise ConfigError(f"{path}: {msg}" if value is _UNSET else f"{path}: {msg}, got {value!r}")


def item(path: str, index: int) -> str:
    """The override path of a list entry: ``data.sources`` + 1 -> ``data.sources.1``."""
    return f"{path}.{index}"


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _range(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_num(low)}"
    return f"{'<' if high_open else '<='} {_num(high)}"


def check_number(path: str, v: Any, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False, integer: bool = False,
                 allow_none: bool = False):
    """A finite number (an integer if `integer`) within the bounds; returns it (ints are
    accepted where floats are, and returned as floats)."""
    if v is None and allow_none:
        return None
    if integer:
        if not isinstance(v, int) or isinstance(v, bool):
            fail(path, "must be an integer", v)
    elif not is_number(v):
        fail(path, "must be a number", v)
    if not math.isfinite(v):
        fail(path, "must be a finite number", v)
    if ((low is not None and (v <= low if low_open else v < low))
            or (high is not None and (v >= high if high_open else v > high))):
        fail(path, f"must be {'null or ' if allow_none else ''}{_range(low, high, low_open, high_open)}", v)
    return v if integer else float(v)


def check_choice(path: str, v: Any, choices: Iterable) -> Any:
    choices = tuple(choices)
    if v not in choices or isinstance(v, bool) != any(isinstance(c, bool) for c in choices):
        fail(path, f"must be one of {', '.join(map(str, choices))}", v)
    return v


def check_bool(path: str, v: Any) -> bool:
    if not isinstance(v, bool):
        fail(path, "must be true or false", v)
    return v


def check_string(path: str, v: Any, allow_none: bool = False, what: str = "a non-empty string"):
    if v is None and allow_none:
        return None
    if not isinstance(v, str) or not v.strip():
        fail(path, f"must be {what}", v)
    return v


def check_known_keys(path: str, raw: Mapping, known: Iterable[str]) -> None:
    """A key that no field reads is a typo, never ignored."""
    known = sorted(known)
    unknown = sorted(set(raw) - set(known), key=str)
    if unknown:
        prefix = f"{path}." if path else ""
        fail(f"{prefix}{unknown[0]}", f"unknown key (known: {', '.join(known)})")


# --------------------------------------------------------------------------- the L2A layer
L2A_INIT_MODES = ("paper", "identity")
L2A_ATTN_BACKENDS = ("auto", "torch", "triton", "flex", "fa4")
# The layout of the routed path's compacted queries (kernels/token_sparse/compact.py):
# `count` rows (the routed count R, read from the device per layer) or `capacity` (T rows).
L2A_ROUTED_ROWS = ("count", "capacity")


def _check_layers(path: str, layers: Any) -> None:
    if layers is None:
        return
    if not isinstance(layers, (list, tuple)):
        fail(path, "must be a list of layer indices or null", layers)
    for i, v in enumerate(layers):
        check_number(item(path, i), v, 0, integer=True)


_L2A_RULES = {
    "window": lambda p, v: check_number(p, v, 1, integer=True),
    "router_tau": lambda p, v: check_number(p, v, 0, low_open=True),
    "router_threshold": lambda p, v: check_number(p, v, 0, 1, low_open=True, high_open=True),
    "dense_prob": lambda p, v: check_number(p, v, 0, 1),
    "init": lambda p, v: check_choice(p, v, L2A_INIT_MODES),
    "attn_backend": lambda p, v: check_choice(p, v, L2A_ATTN_BACKENDS),
    "routed_projections": check_bool,
    "routed_rows": lambda p, v: check_choice(p, v, L2A_ROUTED_ROWS),
    "fused_elementwise": check_bool,
    "layers": _check_layers,
}


def check_l2a_fields(values: Mapping[str, Any], path_of) -> None:
    """Check the L2A layer's fields present in `values` (keys: window, router_tau,
    router_threshold, dense_prob, init, attn_backend, routed_projections, routed_rows,
    fused_elementwise, layers); `path_of(key)` names the field where the user sets it (``l2a.window``,
    ``l2a_window`` in a model's config.json, ``model.window``)."""
    for key, rule in _L2A_RULES.items():
        if key in values:
            rule(path_of(key), values[key])
