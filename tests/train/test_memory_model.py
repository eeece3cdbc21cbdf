"""The memory model of `python -m train.plan` (train/plan/memory_model.py) against numbers
worked out by hand for a tiny shape: parameter counts, the bytes of parameters, gradients
and optimizer states, and what one decoder layer saves for backward."""

from __future__ import annotations

import pytest

from train.plan.memory_model import Shape, layer_saved_bytes_per_token, param_counts, predict

# hidden 8, 2 layers, 2 query heads and 1 KV head of 4 dims, MLP 16, vocab 10, untied.
TINY = Shape(hidden=8, layers=2, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=10,
             tied=False)


def test_parameter_counts_by_hand():
    # One attention branch: q 8x8 + o 8x8 + k 8x4 + v 8x4 = 192, QK-norms 4 + 4 -> 200.
    # Dense layer trainable: 200 + input/post norms 16 = 216; x2 + final norm 8 = 440.
    # Frozen: MLP 3 x 8 x 16 = 384 per layer -> 768, embeddings + LM head 2 x 10 x 8 = 160.
    assert param_counts(TINY, "dense") == (440 + 928, 440)
    # L2A layer: two branches 400 + three norms 24 + router 8 = 432; x2 + 8 = 872.
    assert param_counts(TINY, "l2a") == (872 + 928, 872)


def test_layer_saved_bytes_by_hand():
    # h = q = 8, k = 4, I = 16 (bytes per token).
    # dense, transformers' norms: 14h + 12q + 10k + 6I = 112 + 96 + 40 + 96.
    assert layer_saved_bytes_per_token(TINY, "dense") == 344
    # ... under ZeRO-3's linear the MLP also keeps its input 2h and down_proj's input 2I.
    assert layer_saved_bytes_per_token(TINY, "dense", zero3_linear=True) == 344 + 16 + 32
    # L2A, lean norms: local 2h + 8q + 6k, global 4h + 8q + 6k, post-norm 2h, MLP.
    assert layer_saved_bytes_per_token(TINY, "l2a") == 16 + 88 + 32 + 88 + 16 + 96
    # ... with the global branch's output kept for the gate's gradient: + 2h.
    assert layer_saved_bytes_per_token(TINY, "l2a", branch_output_kept=True) == \
        16 + 88 + 32 + 88 + 16 + 16 + 96
    # L2A as before: transformers' norms (8h + 12q + 10k per branch) + the router's fp32
    # copy 4h + gate 2h + post-norm 6h + MLP.
    assert layer_saved_bytes_per_token(TINY, "l2a", norms="hf", router_copy=True,
                                       branch_output_kept=True) == \
        2 * (64 + 96 + 40) + 32 + 16 + 48 + 96
    # Tiled MLP: only its input (2h) instead of 3 x 2I.
    assert layer_saved_bytes_per_token(TINY, "dense", tiled_mlp_shards=4) == 344 - 96 + 16


def test_static_memory_by_hand():
    z3 = predict(TINY, "l2a", seq_len=64, world=2, sp=1, zero_stage=3)
    assert (z3.params, z3.grads, z3.optimizer_states) == (1800, 872, 5232)  # (2P, 2T, 12T) / 2
    z2 = predict(TINY, "l2a", seq_len=64, world=2, zero_stage=2)
    assert (z2.params, z2.grads, z2.optimizer_states) == (3600, 872, 5232)
    z1 = predict(TINY, "l2a", seq_len=64, world=2, zero_stage=1)
    assert (z1.params, z1.grads, z1.optimizer_states) == (3600, 1744, 5232)
    fp32 = predict(TINY, "dense", seq_len=64, world=1, zero_stage=3, precision="fp32")
    assert (fp32.params, fp32.grads, fp32.optimizer_states) == (4 * 1368, 4 * 440, 8 * 440)


def test_activations_scale_with_tokens_per_rank():
    one = predict(TINY, "dense", seq_len=64, world=2, sp=1)
    two = predict(TINY, "dense", seq_len=64, world=2, sp=2)
    # Checkpointed layer inputs: layers x 2h bytes x tokens per rank = 2 x 16 x 64.
    assert one.checkpointed_inputs == 2048 and two.checkpointed_inputs == 1024
    assert one.layer_saved == 64 * (344 + 48) and two.layer_saved == 32 * (344 + 48)
    off = predict(TINY, "dense", seq_len=64, world=2, offload_checkpoints=True)
    assert off.checkpointed_inputs == 0 and off.layer_saved == one.layer_saved
    assert one.peak == one.static + one.zero_buffers + max(
        one.checkpointed_inputs + one.layer_saved + one.backward_transient,
        one.checkpointed_inputs + one.loss)
    with pytest.raises(ValueError, match="sp"):
        predict(TINY, "dense", seq_len=64, world=2, sp=3)


def test_8b_prediction_has_the_issue_case():
    """The 8x H100 SP=8 case is in the table, and 8B at 128K with SP=8 is predicted to fit
    an 80 GB card (what the issue's recipe needs); the numbers are the model's, not a run's."""
    from train.plan.memory_model import table

    rows = [r for r in table() if r["case"].startswith("8x H100, SP=8")]
    assert {r["variant"] for r in rows} == {"l2a", "dense"}
    assert all(r["peak"] < 80 for r in rows)
