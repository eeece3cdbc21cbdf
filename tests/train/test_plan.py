"""`python -m train.plan`: the config is read as `python -m train` reads it, and the verdict
follows the memory model. Expectations are worked out by hand for a random base (bf16:
2 bytes a parameter and a gradient, 12 bytes of AdamW state a trainable parameter)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from train.plan.memory_model import GIB

ROOT = Path(__file__).resolve().parents[2]
H, INTER, L, HEADS, KV, D, V, SEQ = 1024, 4096, 8, 8, 4, 128, 32000, 4096
BASE = ["experiment=tiny", "data.tokenizer=byte", f"data.seq_len={SEQ}",
        f"model.random_base.hidden_size={H}", f"model.random_base.intermediate_size={INTER}",
        f"model.random_base.num_hidden_layers={L}", f"model.random_base.num_attention_heads={HEADS}",
        f"model.random_base.num_key_value_heads={KV}", f"model.random_base.head_dim={D}",
        f"model.random_base.vocab_size={V}", "model.random_base.tie_word_embeddings=false",
        f"model.random_base.max_position_embeddings={SEQ}",
        "deepspeed=zero2", "train.precision=bf16", "train.activation_checkpointing=true"]


def _plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.plan", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def _hand_counts() -> tuple[int, int]:
    q, k = HEADS * D, KV * D
    branch = 2 * H * q + 2 * H * k + 2 * D  # q, k, v, o + QK-norm weights (Qwen3)
    trainable = L * (2 * branch + 3 * H + H) + H  # two branches, 3 norms, router; final norm
    frozen = L * 3 * H * INTER + 2 * V * H  # MLPs, untied embeddings + LM head
    return trainable + frozen, trainable


def test_static_memory_and_checkpoints_from_the_config():
    done = _plan(*BASE, "train.sequence_parallel=2", "train.micro_batch_size=2",
                 "train.global_batch_size=null", "--gpus", "4", "--gib", "80", "--json")
    assert done.returncode == 0, done.stderr
    r = json.loads(done.stdout)
    total, trainable = _hand_counts()
    # ZeRO-2 over 4 ranks: parameters whole, gradients and optimizer states partitioned.
    assert r["params"] == pytest.approx(2 * total / GIB, abs=0.006)
    assert r["grads"] == pytest.approx(2 * trainable / 4 / GIB, abs=0.006)
    assert r["optimizer_states"] == pytest.approx(12 * trainable / 4 / GIB, abs=0.006)
    # One bf16 layer input per layer and token: 2 rows of SEQ, SP 2 halves what a rank holds.
    assert r["checkpointed_inputs"] == pytest.approx(L * 2 * H * (2 * SEQ) / 2 / GIB, abs=0.006)
    assert (r["variant"], r["sp"], r["zero"], r["fits"]) == ("l2a", 2, 2, True)


def test_verdict_and_exit_codes():
    fits = json.loads(_plan(*BASE, "--gpus", "1", "--gib", "80", "--json").stdout)
    peak = fits["peak"]
    tight = _plan(*BASE, "--gpus", "1", "--gib", f"{peak - 0.5:.2f}")
    assert tight.returncode == 1 and "does not fit: predicted peak" in tight.stdout
    roomy = _plan(*BASE, "--gpus", "1", "--gib", f"{peak + 0.5:.2f}")
    assert roomy.returncode == 0 and "fits: predicted peak" in roomy.stdout
    dense = json.loads(_plan(*BASE, "l2a=dense", "--gpus", "1", "--gib", "80", "--json").stdout)
    assert dense["variant"] == "dense" and dense["params"] < fits["params"]  # one branch


@pytest.mark.parametrize("args, message", [
    (["train.sequence_parallel=2", "--gpus", "3", "--gib", "80"],
     "train.plan: error: train.sequence_parallel: must divide --gpus (3), got 2"),
    (["train.activation_checkpointing=false", "--gpus", "1", "--gib", "80"],
     "train.plan: error: train.activation_checkpointing: the memory model covers checkpointed "
     "training only, got false"),
    (["--gpus", "1"], "train.plan: error: --gpus and --gib are needed (or --table / --check)"),
    (["train.max_steps=0", "--gpus", "1", "--gib", "80"],
     "train.plan: error: train.max_steps: must be > 0, got 0"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    done = _plan(*BASE, *args)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [message]
