"""transformers probes for a hub package named `kernels` and may import ours instead.

In a fresh interpreter with the repo root first on sys.path: importing transformers, its
`kernels` availability probe, and a model running through an AttentionInterface function
backed by our ops must all work.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import sys
sys.path.insert(0, sys.argv[1])
import torch
import transformers
from transformers import AttentionInterface, Qwen3Config, Qwen3ForCausalLM
from transformers.utils import import_utils

assert not import_utils.is_kernels_available(), "our kernels/ taken for the hub package"
import kernels
assert kernels.__file__.startswith(sys.argv[1]), kernels.__file__

def ours(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    T = query.shape[2]
    route = torch.ones(query.shape[0], T, dtype=torch.bool)
    o = kernels.token_sparse_attention(query, key, value, route, scale=scaling)
    return o.transpose(1, 2).contiguous(), None

AttentionInterface.register("l2a_kernels_probe", ours)
torch.manual_seed(0)
cfg = Qwen3Config(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  attn_implementation="eager")
model = Qwen3ForCausalLM(cfg).eval()
ids = torch.randint(0, 97, (2, 23))
with torch.no_grad():
    ref = model(ids).logits
    model.set_attn_implementation("l2a_kernels_probe")
    got = model(ids).logits
torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
print("ok")
"""


def test_transformers_with_repo_kernels_package_on_path():
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ROOT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().endswith("ok")
