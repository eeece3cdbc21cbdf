"""Launch configurations of the attention kernels, per pass and head dim.

Chosen by measurement on an H100 and an H200 (bench/attention.py --sweep; variants and
timings in docs/KERNELS.md). Keys never include the sequence length. `block_m` counts rows of a
program: packed query heads x compacted queries.

A JSON file named by `L2A_KERNEL_CONFIGS` overrides entries at import, for a GPU the
table was not tuned on: `{"fwd/128": {"block_n": 64, "kv_desc": true}, ...}` (keys
`pass/head-dim bucket`, values LaunchConfig fields); `python -m kernels.tuning.pick` writes
one from a sweep.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path

from triton.runtime.errors import OutOfResources


@dataclass(frozen=True)
class LaunchConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    max_packed_heads: int = 8
    # Load K/V tiles through TMA tensor descriptors instead of pointers.
    kv_desc: bool = False
    # dkdv: reload the key block's K/V tiles every iteration (operands from shared
    # memory) instead of holding them in registers across the loop.
    kv_reload: bool = False
    # dkdv: stream compacted copies of q and dO written by the dq pass, not a gather;
    # compact_desc loads them through tensor descriptors.
    compact: bool = False
    compact_desc: bool = False
    # dkdv: also compute dQ there (one matmul more per tile) and add it to fp32 rows with
    # atomics, instead of the dq pass recomputing S and dP (two matmuls); not bitwise
    # deterministic.
    atomic_dq: bool = False


# (pass, head dim bucket) -> config; the bucket is the padded head dim (power of two).
# Head dim 128 (Qwen3/Qwen2.5 7-8B): K/V through TMA descriptors in fwd and dq and dK/dV
# streaming the compacted q/dO with 3 stages measured fastest on an H200 (docs/KERNELS.md);
# the other buckets keep pointer loads (not measured with the flags).
GPU_CONFIGS: dict[tuple[str, int], LaunchConfig] = {
    ("fwd", 64): LaunchConfig(128, 64, 4, 3),
    ("fwd", 128): LaunchConfig(128, 128, 8, 3, kv_desc=True),
    ("fwd", 256): LaunchConfig(64, 32, 8, 2),
    ("dq", 64): LaunchConfig(128, 64, 8, 2),
    ("dq", 128): LaunchConfig(128, 64, 8, 3, kv_desc=True),
    ("dq", 256): LaunchConfig(64, 32, 8, 1),
    ("dkdv", 64): LaunchConfig(64, 128, 8, 2),
    ("dkdv", 128): LaunchConfig(64, 128, 8, 3, compact=True),
    ("dkdv", 256): LaunchConfig(32, 64, 8, 1),
}

# The interpreter runs programs one after another on the CPU: small tiles exercise the
# block-boundary logic at small sequence lengths.
INTERPRET_CONFIG = LaunchConfig(64, 32, 4, 1, max_packed_heads=4)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def get_config(pass_name: str, block_d: int, on_gpu: bool) -> LaunchConfig:
    if not on_gpu:
        return INTERPRET_CONFIG
    key = (pass_name, max(64, block_d))
    if key not in GPU_CONFIGS:
        raise ValueError(f"head dim bucket {block_d} has no {pass_name} kernel configuration")
    return GPU_CONFIGS[key]


def set_config(pass_name: str, block_d: int, **changes) -> LaunchConfig:
    """Override one entry (used by the tuning sweep); returns the previous config."""
    key = (pass_name, max(64, block_d))
    old = GPU_CONFIGS[key]
    GPU_CONFIGS[key] = replace(old, **changes)
    return old


def smaller_configs(cfg: LaunchConfig):
    """`cfg`, then versions needing less shared memory: fewer pipeline stages, then
    narrower key tiles, then fewer rows (for GPUs with less shared memory per block than
    the H100 the table was tuned on, e.g. 99 KB on sm_86/sm_89)."""
    yield cfg
    while cfg.num_stages > 1:
        cfg = replace(cfg, num_stages=cfg.num_stages - 1)
        yield cfg
    while cfg.block_n > 16:
        cfg = replace(cfg, block_n=cfg.block_n // 2)
        yield cfg
    while cfg.block_m > 16:
        cfg = replace(cfg, block_m=cfg.block_m // 2)
        yield cfg


# (pass, head-dim bucket, device, configured entry) -> the config that launched there.
_WORKING: dict[tuple, LaunchConfig] = {}


def run_with_fallback(pass_name: str, block_d: int, on_gpu: bool, device, launch) -> None:
    """`launch(cfg)` with this pass's config, or the first smaller one (smaller_configs)
    the device has the resources for; remembered per device, announced once."""
    base = get_config(pass_name, block_d, on_gpu)
    key = (pass_name, block_d, str(device), base)
    if key in _WORKING:
        launch(_WORKING[key])
        return
    error = None
    for cfg in smaller_configs(base):
        try:
            launch(cfg)
        except OutOfResources as e:
            error = e
            continue
        if cfg != base:
            warnings.warn(
                f"kernels: the {pass_name} launch config {base} needs more than {device} "
                f"offers ({error}); using {cfg}. Tune one for this GPU: docs/KERNELS.md.",
                stacklevel=3,
            )
        _WORKING[key] = cfg
        return
    raise error


def packed_heads(group: int, block_m: int, max_packed: int) -> int:
    """Query heads per program: the largest power of two dividing the group size, capped
    so a program still holds at least two compacted queries."""
    gp = group & (-group)
    return max(1, min(gp, max_packed, block_m // 2))


ENV_OVERRIDES = "L2A_KERNEL_CONFIGS"


def apply_overrides(path: str | os.PathLike) -> None:
    """Replace fields of GPU_CONFIGS entries from a JSON file (format in the module doc)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{ENV_OVERRIDES}={path}: cannot read kernel configs ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{ENV_OVERRIDES}={path}: expected an object of 'pass/bucket' keys")
    names = {f.name for f in fields(LaunchConfig)}
    updated = {}
    for key, changes in data.items():
        pass_name, _, bucket = str(key).partition("/")
        entry = (pass_name, int(bucket)) if bucket.isdigit() else None
        if entry not in GPU_CONFIGS:
            known = ", ".join(f"{p}/{b}" for p, b in GPU_CONFIGS)
            raise ValueError(f"{ENV_OVERRIDES}={path}: unknown kernel config {key!r} ({known})")
        if not isinstance(changes, dict) or set(changes) - names:
            bad = sorted(set(changes) - names) if isinstance(changes, dict) else changes
            raise ValueError(f"{ENV_OVERRIDES}={path}: {key}: unknown fields {bad}")
        updated[entry] = replace(GPU_CONFIGS[entry], **changes)
    GPU_CONFIGS.update(updated)  # all or nothing


if os.environ.get(ENV_OVERRIDES):
    apply_overrides(os.environ[ENV_OVERRIDES])
