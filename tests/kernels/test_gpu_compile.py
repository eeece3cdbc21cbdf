"""The GPU kernels compile for Hopper (sm_90) on any machine, through the same host code
and Triton JIT path a GPU run takes (kernels.tuning.resources, compile only).

The interpreter runs the kernels' logic on CPU but never compiles them, so code that only
the compiler sees (TMA descriptors, layouts, shared-memory budgets, register allocation)
is checked here, and each config flag is checked to change the code it should."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KERNELS = {"attn_fwd_kernel", "attn_bwd_dq_kernel", "attn_bwd_dkdv_kernel"}


def _compile(tmp_path: Path, *variants: str) -> dict[str, list[dict]]:
    # A fresh process: this session's kernels were defined under TRITON_INTERPRET=1
    # (tests/conftest.py), which makes @triton.jit build interpreter objects.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "resources.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kernels.tuning.resources",
            "--out",
            str(out),
            "--variants",
            *variants,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    by_variant: dict[str, list[dict]] = {}
    for r in json.loads(out.read_text())["records"]:
        by_variant.setdefault(r["variant"], []).append(r)
    return by_variant


def _by_kernel(records: list[dict], spec: str) -> dict[str, dict]:
    by = {r["kernel"]: r for r in records}
    assert set(by) == KERNELS, f"{spec}: compiled {sorted(by)}"
    for r in records:
        assert 0 < r["registers"] <= 255, r
        if "atomic_dq" not in spec or r["kernel"] != "attn_bwd_dq_kernel":
            assert r["n_hgmma"] > 0, r  # wgmma matmuls on Hopper
        assert r["shared_bytes"] <= 227 * 1024, r  # the sm_90 per-block limit
    return by


PLAIN = "fwd:-kv_desc;dq:-kv_desc;dkdv:-compact"
TMA = "fwd:+kv_desc;dq:+kv_desc;dkdv:64,128,8,2+kv_reload+kv_desc+compact+compact_desc"
ATOMIC = "dkdv:64,128,8,2+atomic_dq"


def test_kernels_compile_for_sm90_and_flags_change_the_code(tmp_path):
    compiled = _compile(tmp_path, PLAIN, TMA, ATOMIC)
    # Shipped configs: K/V through TMA in the forward and dQ kernels, not in dK/dV.
    by = _by_kernel(compiled["default"], "default")
    assert by["attn_fwd_kernel"]["n_utmaldg"] > 0 and by["attn_bwd_dq_kernel"]["n_utmaldg"] > 0
    assert by["attn_bwd_dkdv_kernel"]["n_utmaldg"] == 0
    assert all(r["n_redg"] == 0 for r in by.values())
    by = _by_kernel(compiled[PLAIN], PLAIN)
    assert all(r["n_utmaldg"] == 0 and r["n_redg"] == 0 for r in by.values())
    assert by["attn_fwd_kernel"]["n_ldgsts"] > 0  # cp.async K/V pipeline
    by = _by_kernel(compiled[TMA], TMA)
    for name in KERNELS:
        assert by[name]["n_utmaldg"] > 0, f"{name}: no TMA load"
    assert by["attn_fwd_kernel"]["n_ldgsts"] == 0  # K/V no longer through cp.async
    # atomic_dq: dK/dV adds dQ with global reductions and one matmul more per tile; the
    # dq kernel runs twice (prologue, epilogue) without matmuls.
    atomic = compiled[ATOMIC]
    dkdv = _by_kernel(atomic, ATOMIC)["attn_bwd_dkdv_kernel"]
    assert dkdv["n_redg"] > 0
    assert (
        dkdv["n_hgmma"]
        > _by_kernel(compiled["default"], "default")["attn_bwd_dkdv_kernel"]["n_hgmma"]
    )
    dq_launches = [r for r in atomic if r["kernel"] == "attn_bwd_dq_kernel"]
    assert len(dq_launches) == 2 and all(r["n_hgmma"] == 0 for r in dq_launches)
