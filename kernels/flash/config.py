"""Launch configurations of the attention kernels, per pass and head dim.

Chosen by measurement on an H100 (bench/attention.py --sweep; variants and timings in
docs/KERNELS.md). Keys never include the sequence length. `block_m` counts rows of a
program: packed query heads x compacted queries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class LaunchConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    max_packed_heads: int = 8
    # Load K/V tiles through TMA tensor descriptors (fwd, dq) instead of pointers.
    kv_desc: bool = False
    # Exponentials as bf16x2/f16x2 `ex2.approx` pairs (see tiles.exp2_tile).
    fast_exp: bool = False
    # dkdv: stream compacted copies of q and dO written by the dq pass, not a gather;
    # compact_desc loads them through tensor descriptors.
    compact: bool = False
    compact_desc: bool = False


# (pass, head dim bucket) -> config; the bucket is the padded head dim (power of two).
GPU_CONFIGS: dict[tuple[str, int], LaunchConfig] = {
    ("fwd", 64): LaunchConfig(128, 64, 4, 3),
    ("fwd", 128): LaunchConfig(128, 128, 8, 3),
    ("fwd", 256): LaunchConfig(64, 32, 8, 2),
    ("dq", 64): LaunchConfig(128, 64, 8, 2),
    ("dq", 128): LaunchConfig(128, 64, 8, 3),
    ("dq", 256): LaunchConfig(64, 32, 8, 1),
    ("dkdv", 64): LaunchConfig(64, 128, 8, 2),
    ("dkdv", 128): LaunchConfig(64, 128, 8, 2),
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


def packed_heads(group: int, block_m: int, max_packed: int) -> int:
    """Query heads per program: the largest power of two dividing the group size, capped
    so a program still holds at least two compacted queries."""
    gp = group & (-group)
    return max(1, min(gp, max_packed, block_m // 2))
