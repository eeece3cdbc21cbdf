"""The syntax of a launch-config variant of our attention kernels, shared by the benchmark's
sweep (`python -m bench.attention --sweep`), the picker (`kernels.tuning.pick`) and the
static profile (`kernels.tuning.resources`)."""

from __future__ import annotations

import re

FLAGS = ("kv_desc", "kv_reload", "compact", "compact_desc", "atomic_dq")


def parse_variant(spec: str) -> dict[str, dict]:
    """`pass:bm,bn,warps,stages[,max_packed_heads][+flag|-flag...]`, several joined by `;`;
    numbers may be left out (`fwd:+kv_desc`) to keep the current launch config; `-flag`
    turns a flag of the current config off (`fwd:-kv_desc` times the config without it)."""
    changes: dict[str, dict] = {}
    for part in spec.split(";"):
        pass_name, rest = part.split(":")
        nums, *signed = re.split(r"([+-])", rest)
        ch: dict = {}
        if nums:
            bm, bn, w, st, *gp = (int(x) for x in nums.split(","))
            ch.update(block_m=bm, block_n=bn, num_warps=w, num_stages=st)
            if gp:
                ch["max_packed_heads"] = gp[0]
        for sign, f in zip(signed[::2], signed[1::2]):
            if f not in FLAGS:
                raise ValueError(f"unknown flag {f!r} in {spec!r}; one of {FLAGS}")
            ch[f] = sign == "+"
        changes[pass_name] = ch
    return changes
