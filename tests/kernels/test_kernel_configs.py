"""Launch-config overrides (L2A_KERNEL_CONFIGS) and picking them from a sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels.flash import config
from kernels.tuning.pick import pick

REPO = Path(__file__).resolve().parents[2]


def test_overrides_replace_fields_all_or_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "GPU_CONFIGS", dict(config.GPU_CONFIGS))
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"fwd/128": {"block_n": 64, "kv_desc": True}}))
    config.apply_overrides(good)
    assert config.GPU_CONFIGS[("fwd", 128)].block_n == 64
    assert config.GPU_CONFIGS[("fwd", 128)].kv_desc is True
    assert config.GPU_CONFIGS[("fwd", 128)].num_warps == 8  # untouched fields kept
    before = dict(config.GPU_CONFIGS)
    for data, words in [
        ({"dq/128": {"num_warps": 4}, "fwd/96": {"block_n": 32}}, "unknown kernel config 'fwd/96'"),
        ({"dq/128": {"num_warps": 4}, "dkdv/128": {"warps": 4}}, "unknown fields ['warps']"),
        ([1, 2], "expected an object"),
    ]:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(data))
        with pytest.raises(ValueError, match=r"L2A_KERNEL_CONFIGS=.*bad\.json") as e:
            config.apply_overrides(bad)
        assert words in str(e.value)
        assert config.GPU_CONFIGS == before  # nothing half-applied
    with pytest.raises(ValueError, match="cannot read"):
        config.apply_overrides(tmp_path / "missing.json")


def test_env_var_applies_at_import(tmp_path):
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"dkdv/128": {"compact": True}}))
    code = "from kernels.flash.config import GPU_CONFIGS as c; print(c[('dkdv', 128)].compact)"
    env = {**os.environ, "L2A_KERNEL_CONFIGS": str(path)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "True"


def _rec(spec, fwd, dq, dkdv, err=0.004, **extra):
    return {
        "variant": spec,
        "fwd_ms": fwd,
        "dq_ms": dq,
        "dkdv_ms": dkdv,
        "err_out": err,
        "err_dq": err,
        "err_dk": err,
        "err_dv": err,
        **extra,
    }


def test_pick_takes_the_fastest_accurate_variant_per_pass():
    records = [
        _rec("default", 60.0, 70.0, 124.0),
        _rec("fwd:+kv_desc", 50.0, 69.0, 125.0),  # fwd: 17% faster -> taken
        _rec("fwd:128,64,8,3+kv_desc", 52.0, 70.0, 124.0),  # slower than the one above
        _rec("dq:+kv_desc", 68.0, 67.5, 123.0),  # bwd: 1.8% faster -> under min_gain
        _rec("dkdv:+compact", 60.0, 72.0, 100.0, err=0.05),  # fast but inaccurate
        {"variant": "dkdv:+compact+compact_desc", "error": "OutOfResources: shared memory"},
    ]
    overrides, notes = pick(records, min_gain=0.05)
    assert overrides == {"fwd/128": {"kv_desc": True}}
    assert any("dkdv:+compact rejected" in n for n in notes)
    assert any(n.startswith("bwd: default kept") for n in notes)
    with pytest.raises(ValueError, match="default"):
        pick(records[1:])


def test_pick_judges_the_backward_by_dq_plus_dkdv():
    """atomic_dq moves dq into the dk/dv kernel: its dk/dv time is worse than the default's,
    its dq time far better. Only the sum decides; a dk/dv-only view would reject it, and a
    dk/dv variant that slows the dq pass (compact) more than it saves loses."""
    records = [
        _rec("default", 60.0, 70.0, 124.0),
        _rec("dkdv:+atomic_dq+kv_reload", 60.0, 4.0, 150.0),  # bwd 154 vs 194 -> taken
        _rec("dkdv:+compact", 60.0, 110.0, 100.0),  # dk/dv faster, bwd 210: slower
        _rec("dq:+kv_desc;dkdv:+compact", 60.0, 100.0, 99.0),  # bwd 199: slower
    ]
    overrides, notes = pick(records, min_gain=0.05)
    assert overrides == {"dkdv/128": {"atomic_dq": True, "kv_reload": True}}
    assert any(n.startswith("bwd: dkdv:+atomic_dq+kv_reload 154.0 ms") for n in notes), notes
    records.append(_rec("dq:64,64,4,2;dkdv:+atomic_dq+kv_reload", 60.0, 3.0, 140.0))
    overrides, _ = pick(records, min_gain=0.05)
    assert overrides == {
        "dq/128": {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2},
        "dkdv/128": {"atomic_dq": True, "kv_reload": True},
    }


def test_launch_falls_back_to_smaller_configs_when_out_of_resources(monkeypatch):
    """A GPU with less shared memory than the tuned config needs: the launch retries with
    fewer stages / narrower tiles, warns once, remembers the config, and stays correct."""
    from test_token_sparse_triton import _check_kernels
    from triton.runtime.errors import OutOfResources

    from kernels.flash import host

    if torch.cuda.is_available():
        pytest.skip("interpreter: simulated resource limit")
    real = host.attn_fwd_kernel
    tried = []

    class SmallGPU:  # launches only with key tiles of at most 16 rows
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                tried.append(kwargs["BLOCK_N"])
                if kwargs["BLOCK_N"] > 16:
                    raise OutOfResources(kwargs["BLOCK_N"] * 1024, 16 * 1024, "shared memory")
                return real[grid](*args, **kwargs)

            return launch

    monkeypatch.setattr(host, "attn_fwd_kernel", SmallGPU())
    monkeypatch.setattr(config, "_WORKING", {})
    with pytest.warns(UserWarning, match="needs more than"):
        _check_kernels("random", 63, 4, 1, 16, 2, gpu=False)
    assert tried == [32, 16]  # interpreter config: 1 stage, block_n 32 -> 16
    assert [c.block_n for k, c in config._WORKING.items() if k[0] == "fwd"] == [16]
    tried.clear()
    _check_kernels("random", 63, 4, 1, 16, 2, gpu=False)
    assert tried == [16]  # remembered: no second failure


def test_smaller_configs_order():
    base = config.LaunchConfig(128, 64, 8, 3)
    seq = [(c.block_m, c.block_n, c.num_stages) for c in config.smaller_configs(base)]
    assert seq[:4] == [(128, 64, 3), (128, 64, 2), (128, 64, 1), (128, 32, 1)]
    assert seq[-1] == (16, 16, 1)


def test_sweep_accuracy_check_is_the_same_on_every_run():
    """The sweep calls `errors()` once per variant: each call must start from fresh leaves
    (gradients accumulating across calls made every later variant look inaccurate)."""
    if torch.cuda.is_available():
        pytest.skip("interpreter run")
    from bench.attention import Accuracy

    acc = Accuracy(T=48, fraction=0.3, device="cpu")
    first, second = acc.errors(), acc.errors()
    assert first == second
    assert all(0.0 <= e < 0.05 for e in first.values()), first


def test_parse_variant_sets_and_clears_flags():
    from bench.attention import parse_variant

    assert parse_variant("fwd:+kv_desc") == {"fwd": {"kv_desc": True}}
    assert parse_variant("fwd:128,64,8,4,4-kv_desc;dkdv:+compact-atomic_dq") == {
        "fwd": dict(
            block_m=128, block_n=64, num_warps=8, num_stages=4, max_packed_heads=4, kv_desc=False
        ),
        "dkdv": {"compact": True, "atomic_dq": False},
    }
    with pytest.raises(ValueError, match="unknown flag 'tma'"):
        parse_variant("dq:+tma")
