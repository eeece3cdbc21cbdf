"""What the memory-critical forwards hold at once (bench/live_bytes.py on the CPU): the
tiled MLP's forward writes its shards into one output (no list of shard outputs beside
their concatenation), and the global branch's gated o_proj forward makes nothing beside
its result. Both run again in a checkpointed layer's recomputation, at the step's peak."""

from __future__ import annotations

import torch
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3MLP

from bench.live_bytes import LiveBytes
from l2a.gated_output import GatedResidualLinear
from train.memory import enable_tiled_mlp


def test_live_bytes_counts_what_lives_at_once():
    with LiveBytes() as live:
        a = torch.ones(1000, dtype=torch.float64)  # 8000 B
        b = a * 2                                  # 16000 B live
        del a
        c = b + 1                                  # 16000 B live again
        del b, c
    assert live.peak == 16000 and live.current == 0


def test_tiled_mlp_forward_holds_one_output():
    torch.manual_seed(0)
    tokens, hidden, inter, shards = 256, 16, 16, 16
    mlp = Qwen3MLP(Qwen3Config(hidden_size=hidden, intermediate_size=inter)).double()
    mlp.requires_grad_(False)
    enable_tiled_mlp(mlp, shards)
    x = torch.randn(1, tokens, hidden, dtype=torch.float64, requires_grad=True)
    with LiveBytes() as live:
        y = mlp(x)
    out = y.numel() * 8
    rows = tokens // shards
    # The output, plus one shard's gate, silu(gate), up, their product and its output.
    shard = (4 * rows * inter + rows * hidden) * 8
    assert live.peak <= out + shard, (live.peak, out, shard)


def test_gated_output_forward_makes_nothing_beside_its_result():
    torch.manual_seed(0)
    B, T, q, h = 1, 64, 24, 32
    x = torch.randn(B, T, q, requires_grad=True)
    w = torch.randn(h, q, requires_grad=True)
    res = torch.randn(B, T, h, requires_grad=True)
    gate = torch.rand(B, T, requires_grad=True)
    with LiveBytes() as live:
        out = GatedResidualLinear.apply(x, w, None, res, gate)
    # out itself, and the gate cast to the output's dtype (B x T, already fp32 here: 0).
    assert live.peak <= out.numel() * 4 + B * T * 4, (live.peak, out.numel() * 4)
