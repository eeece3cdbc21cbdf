"""The memory breakdown tool's CPU form (bench/memory_breakdown.py) against the memory model
(train/plan/memory_model.py, whose own hand-worked numbers are tests/train/test_memory_model.py),
and its peak replay."""

from __future__ import annotations

import json

from train.plan.memory_model import Shape, layer_saved_bytes_per_token, param_counts, predict


def test_cpu_breakdown_matches_first_principles(tmp_path):
    """The tool's CPU form: one process, the tiny model under ZeRO-3 in fp32. Its counts of
    the engine's tensors equal the model's formulas, and the tensors one layer saves are
    within 10% of the per-token formula (the CPU attention path saves a little more than the
    GPU kernels)."""
    from bench.memory_breakdown import main

    out = tmp_path / "mem.json"
    assert main(["--cpu", "--variants", "l2a,dense", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["deepspeed"] == "zero3" and report["sequence_parallel"] == 1
    for variant, r in report["results"].items():
        shape = Shape(**r["shape"])
        total, trainable = param_counts(shape, variant)
        assert (r["total_params"], r["trainable_params"]) == (total, trainable)
        want = predict(shape, variant, seq_len=report["seq_len"], world=1, zero_stage=3,
                       precision="fp32")
        s = r["static_bytes"]
        assert s["params"] == want.params == 4 * total
        assert s["grads"] == want.grads
        assert s["optimizer_states"] == want.optimizer_states
        # ZeRO-3 keeps fp32 master partitions of the trainable parameters. In an fp32 run it
        # could reuse the working partitions, but DeepSpeed 0.19.8 on the CPU compares the
        # device "cpu" with torch.device("cpu") and copies: 4 bytes per trainable parameter.
        assert s["master_weights"] == 4 * trainable
        layer = r["layer_saved"]
        assert layer["zero3_linear"]  # the engine replaced F.linear, as in a ZeRO-3 run
        formula = layer_saved_bytes_per_token(shape, variant, zero3_linear=True)
        assert 0.9 < layer["per_token"] / formula < 1.1, (variant, layer["per_token"], formula)


def test_peak_replay_finds_the_live_allocations_at_the_peak():
    """The allocation-trace replay of the GPU breakdown, on a hand-made trace: the peak is
    where the allocated bytes are highest (a block counts until its free completes), and the
    allocations live there are grouped by site and category."""
    from bench.memory_breakdown import peak_allocations

    def fr(file, line, name):
        return {"filename": file, "line": line, "name": name}

    norm = [fr("/repo/l2a/rmsnorm.py", 40, "forward"), fr("/repo/l2a/layers.py", 200, "forward")]
    loss = [fr("/repo/train/losses.py", 90, "_chunked_forward")]
    kern = [fr("/repo/kernels/flash/host.py", 300, "forward"),
            fr("/x/torch/utils/checkpoint.py", 1, "recompute_fn")]
    # As on the H200: the attention's all-to-all and our attention kernel, recomputed for
    # the backward that the tiled MLP's backward started (the tiled MLP is further out).
    outer = [fr("/site/deepspeed/runtime/sequence_parallel/ulysses_sp.py", 1026, "backward"),
             fr("/x/torch/utils/checkpoint.py", 1, "unpack_hook")]
    a2a = [fr("/site/deepspeed/runtime/sequence_parallel/ulysses_sp.py", 226,
              "_partition_global_sequence"), *outer]
    fa = [fr("/repo/kernels/flash/host.py", 94, "attention_fwd"), *outer]
    # The LM head's weight gathered by ZeRO-3 inside the chunked loss: a gathered parameter
    # (innermost), not the loss's own memory.
    head = [fr("/site/deepspeed/runtime/zero/partition_parameters.py", 1388,
               "_all_gather_sequential"), *loss]
    trace = [
        {"action": "alloc", "addr": 7, "size": 5, "frames": head},
        {"action": "alloc", "addr": 5, "size": 30, "frames": a2a},
        {"action": "alloc", "addr": 6, "size": 20, "frames": fa},
        {"action": "alloc", "addr": 1, "size": 100, "frames": norm},
        {"action": "alloc", "addr": 2, "size": 50, "frames": loss},
        {"action": "free_requested", "addr": 2, "size": 50, "frames": loss},  # not yet free
        {"action": "alloc", "addr": 3, "size": 70, "frames": kern},  # peak: 1000 + 275
        {"action": "free_completed", "addr": 2, "size": 50, "frames": loss},
        {"action": "free_completed", "addr": 3, "size": 70, "frames": kern},
        {"action": "alloc", "addr": 4, "size": 60, "frames": []},  # 1000 + 215: below
    ]
    out = peak_allocations({"device_traces": [trace]}, 0, start_bytes=1000)
    assert out["replayed_peak_bytes"] == 1275
    sites = {(s["site"], s["category"]): s["bytes"] for s in out["top_sites"]}
    assert sites == {
        ("partition_parameters.py:1388 _all_gather_sequential",
         "ZeRO (gathered parameters, gradient buckets)"): 5,
        ("ulysses_sp.py:226 _partition_global_sequence",
         "Ulysses all-to-all (attention's sequence parallelism) [recomputed layer]"): 30,
        ("host.py:94 attention_fwd", "attention kernels [recomputed layer]"): 20,
        ("rmsnorm.py:40 forward", "norms"): 100,
        ("losses.py:90 _chunked_forward", "loss (chunked LM head + cross-entropy)"): 50,
        ("host.py:300 forward", "attention kernels [recomputed layer]"): 70,
    }


def test_checks_hold_the_measured_runs_and_the_512k_predictions():
    """The measured SP=2 points are each beside a prediction; not keeping the global
    branch's output is one bf16 stream copy less per rank: 2 x 4096 x 262144 B = 2 GiB
    at 512K tokens with SP=2."""
    from train.plan.memory_model import GIB, checks, predict

    rows = {(r["variant"], r["seq_len"], r["measured_peak"] is None): r for r in checks()}
    assert rows[("dense", 393216, False)]["measured_peak"] == 105.54
    # Dense at 512K ran out of memory: it needed more than the 130 GiB bound, and the
    # model's prediction (under the bound) is the model's error there, kept visible.
    oom = rows[("dense", 524288, True)]
    assert oom["needed_at_least"] > 130 and oom["predicted_peak"] > 0
    assert rows[("l2a", 131072, False)]["measured_peak"] < 70
    kept = predict("qwen3_8b", "l2a", 524288, world=2, sp=2, tiled_mlp_shards=64,
                   branch_output_kept=True)
    lean = predict("qwen3_8b", "l2a", 524288, world=2, sp=2, tiled_mlp_shards=64)
    assert kept.peak - lean.peak == 2 * GIB


def test_runs_are_configured_for_the_benchmarks_sequence_length():
    """The trainer config carries the benchmark's sequence length (the sequence-parallel
    checks divide it; the run directory once stood in its place, which only SP > 1 on a GPU
    would have shown)."""
    from argparse import Namespace

    from bench.memory_breakdown import build_config

    args = Namespace(model="tiny", deepspeed="zero3", warmup_steps=1, window=16,
                     sparsity_target=0.8, seq_len=96, sequence_parallel=2, docs_per_row=1,
                     tiled_mlp="off", offload_checkpoints=False, override=[])
    for variant in ("l2a", "dense"):
        cfg, overrides = build_config(args, variant)
        assert cfg.data.seq_len == 96
        assert cfg.train.sequence_parallel == 2
