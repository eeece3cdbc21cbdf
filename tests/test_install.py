"""The packages as `pip install` puts them (pyproject.toml): importable from any directory,
and the top-level `kernels` coexists with transformers' probe for the hub package of that
name (see tests/kernels/test_import_hazard.py for the repository checkout)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import sys, os
site = sys.argv[1]
import l2a, train, kernels, launch
for m in (l2a, train, kernels, launch):
    assert m.__file__.startswith(site), (m.__name__, m.__file__)
from transformers.utils import import_utils
assert not import_utils.is_kernels_available(), "installed kernels/ taken for the hub package"
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from l2a.convert import convert_model
from train.tiny_base import TINY_SHAPE, qwen3_config, random_qwen3, byte_tokenizer
base = random_qwen3(qwen3_config(TINY_SHAPE, vocab_size=len(byte_tokenizer())), seed=0)
model = convert_model(base, init="identity", window=8)
ids = torch.randint(0, 256, (1, 12))
with torch.no_grad():
    torch.testing.assert_close(model(ids).logits, base(ids).logits, atol=1e-4, rtol=1e-4)
print("ok")
"""


def test_installed_packages_work_outside_the_repository(tmp_path):
    # A copy of the checkout: pip builds in the source tree (build/, *.egg-info).
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", ".cache", ".git", "outputs", "multirun", "__pycache__", "build", "*.egg-info"))
    site = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(src)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert pip.returncode == 0, pip.stderr[-3000:]
    names = {p.name for p in site.iterdir()}
    assert {"l2a", "train", "kernels", "launch", "bench", "study", "hydra_plugins"} <= names, names
    assert "tests" not in names
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(site)], cwd=outside, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().endswith("ok")


# The module each GPU extra provides, and the code that imports it (the framework itself,
# not the benchmarks: an extra no code calls is a long compile for nothing on a cluster).
GPU_EXTRA_MODULES = {"liger-kernel": "liger_kernel", "flash-attn-4": "flash_attn.cute",
                     "lm-eval": "lm_eval"}


def test_every_gpu_extra_is_used_by_the_framework():
    import re

    names = [re.split(r"[<>=!~ \[]", line.strip())[0] for line in
             (ROOT / "requirements-gpu.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert names, "requirements-gpu.txt lists nothing"
    code = "\n".join(p.read_text() for pkg in ("l2a", "kernels", "train", "eval")
                     for p in (ROOT / pkg).rglob("*.py"))
    for name in names:
        module = GPU_EXTRA_MODULES.get(name)
        assert module is not None, f"{name}: which module does it provide? (no code imports it)"
        assert re.search(rf"^\s*(import|from) {re.escape(module)}\b", code, re.M), (
            f"{name} is listed but nothing in l2a/, kernels/, train/, eval/ imports {module}")
