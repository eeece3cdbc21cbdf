"""CPU-checkable parts of bench/train_throughput.py (the benchmark itself needs GPUs)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from bench.train_throughput import SyntheticPackedLoader


def test_synthetic_loader_is_deterministic_and_packs_documents():
    a = SyntheticPackedLoader(64, 2, 100, rank=1, seed=3, docs_per_row=3)
    b = SyntheticPackedLoader(64, 2, 100, rank=1, seed=3, docs_per_row=3)
    other_rank = SyntheticPackedLoader(64, 2, 100, rank=0, seed=3, docs_per_row=3)
    first, again = next(a), next(b)
    for k in first:
        assert torch.equal(first[k], again[k])
    assert not torch.equal(first["input_ids"], next(other_rank)["input_ids"])
    pos, labels = first["position_ids"], first["labels"]
    for row in range(2):
        starts = (pos[row] == 0).nonzero().flatten().tolist()
        assert len(starts) == 3 and starts[0] == 0
        assert (labels[row, starts] == -100).all()
        assert (labels[row] != -100).sum() == 64 - 3
    # resume: the state of the loader reproduces the next batch
    state = a.state_dict()
    nxt = next(a)
    b2 = SyntheticPackedLoader(64, 2, 100, rank=1, seed=3, docs_per_row=3)
    b2.load_state_dict(state)
    assert torch.equal(next(b2)["input_ids"], nxt["input_ids"])


def test_config_carries_sequence_parallel_and_json_records_the_shape():
    from transformers import Qwen3Config

    from bench.train_throughput import _config, model_shape

    args = SimpleNamespace(
        model="qwen3_8b_random", deepspeed="zero3", steps=3, sequence_parallel=2,
        no_activation_checkpointing=False, lr=1e-4, window=4095, sparsity_target=0.8,
        override=["model.random_base.num_hidden_layers=3"],
    )
    cfg, overrides = _config(args, "l2a", 262144)
    assert cfg.train.sequence_parallel == 2 and cfg.data.seq_len == 262144
    assert cfg.model.random_base["num_attention_heads"] == 32  # Qwen3-8B's shape
    shape = model_shape(Qwen3Config(**cfg.model.random_base))
    assert shape["num_hidden_layers"] == 3  # the override, not the preset's 36
    assert (shape["hidden_size"], shape["num_key_value_heads"], shape["head_dim"]) == (4096, 8, 128)
    assert shape["vocab_size"] == 151936


def test_dense_variants_pick_their_attention_whatever_the_preset():
    """qwen3_8b_random pins `sdpa`: `dense` must still be the fastest dense baseline (auto:
    FlashAttention-4 where it runs) and `dense_sdpa` the SDPA one; a user override wins."""
    from bench.train_throughput import _config

    args = SimpleNamespace(
        model="qwen3_8b_random", deepspeed="zero3", steps=3, sequence_parallel=2,
        no_activation_checkpointing=False, lr=1e-4, window=4095, sparsity_target=0.8, override=[],
    )
    assert _config(args, "dense", 4096)[0].model.dense_attn_implementation == "auto"
    assert _config(args, "dense_sdpa", 4096)[0].model.dense_attn_implementation == "sdpa"
    assert not _config(args, "dense", 4096)[0].l2a.enabled
    args.override = ["model.dense_attn_implementation=flash_attention_2"]
    assert _config(args, "dense", 4096)[0].model.dense_attn_implementation == "flash_attention_2"


def test_speedups_pair_every_l2a_variant_with_every_dense_one_of_its_length():
    from bench.train_throughput import speedups

    results = {
        "l2a_fused": {"variant": "l2a_fused", "seq_len": 8, "tokens_per_s_per_gpu": 300.0},
        "dense": {"variant": "dense", "seq_len": 8, "tokens_per_s_per_gpu": 150.0},
        "dense_sdpa": {"variant": "dense_sdpa", "seq_len": 8, "tokens_per_s_per_gpu": 120.0},
        "dense@16": {"variant": "dense", "seq_len": 16, "tokens_per_s_per_gpu": 50.0},
        "l2a": {"variant": "l2a", "seq_len": 8, "tokens_per_s_per_gpu": None},  # not timed
    }
    assert speedups(results) == {"l2a_fused/dense": 2.0, "l2a_fused/dense_sdpa": 2.5}


def test_unknown_variant_is_refused_before_anything_starts(capsys):
    from bench.train_throughput import main

    assert main(["--variants", "l2a,l2a_fsued", "--cpu-smoke"]) == 2
    assert "--variants" in capsys.readouterr().err


def test_cpu_smoke_trains_both_variants_on_the_tiny_model(tmp_path):
    """The benchmark's whole path (config, synthetic rows, trainer, report) at CPU size, with
    the memory-limit option given (it watches GPUs only) and --pin-sparsity: both variants
    train their steps and their losses are near ln(vocab) (random weights: near-uniform
    predictions); the L2A variant runs at the target sparsity from its first step."""
    import json
    import math

    from bench.train_throughput import main

    out = tmp_path / "tt.json"
    assert main(["--cpu-smoke", "--model", "tiny", "--variants", "l2a,dense", "--seq-len", "96",
                 "--steps", "2", "--skip-steps", "1", "--window", "16", "--stop-above-gib", "1",
                 "--pin-sparsity", "--sparsity-target", "0.8",
                 "--work-dir", str(tmp_path / "runs"), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    shape = report["model_shape"]
    assert shape["num_hidden_layers"] == 2
    for variant in ("l2a", "dense"):
        r = report["results"][variant]
        assert r["steps"] == 2 and r["timed_steps"] == 1 and r["seq_len"] == 96
        assert abs(r["final_lm_loss"] - math.log(shape["vocab_size"])) < 0.5, r["final_lm_loss"]
        assert r["routed_step_s"] is not None
    l2a, dense = report["results"]["l2a"], report["results"]["dense"]
    assert l2a["pinned_sparsity"] == 0.8 and dense["pinned_sparsity"] is None
    # round(0.2 * 96) = 19 of 96 tokens routed per row and layer: within 1/96 of the target.
    assert [abs(s["sparsity"] - 0.8) <= 1 / 96 for s in l2a["per_step"]] == [True, True], l2a["per_step"]
    assert dense["expected_step_s"] == dense["routed_step_s"] == dense["mean_step_s"]
    assert set(report["routed_speedups"]) == {"l2a/dense"}


def test_cpu_smoke_profile_records_the_host_and_warm_dense_path_steps(tmp_path):
    """--profile's host record (bench.host_profile) on a run with dense-path steps: every
    decoder layer's forward and recomputation marked once per profiled step (activation
    checkpointing), and the dense-path step time taken from warm steps after a warm-up."""
    import json

    from bench.train_throughput import main

    out = tmp_path / "tt.json"
    assert main(["--cpu-smoke", "--model", "tiny", "--variants", "l2a", "--seq-len", "64",
                 "--steps", "2", "--skip-steps", "1", "--window", "16", "--profile",
                 "--override", "l2a.dense_prob=0.5", "--warm-dense-path-steps", "1",
                 "--work-dir", str(tmp_path / "runs"), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    # the CPU-counted syncs and launches of the variant's layer passes ride along
    assert set(report["layer_op_counts"]["variants"]) == {"l2a_routed", "l2a_dense_path"}
    r = report["results"]["l2a"]
    layers = r["model_shape"]["num_hidden_layers"]
    host = r["profile_kernel_ms"]["host"]
    assert host["passes"]["l2a.forward"]["count"] == layers
    assert host["passes"]["l2a.recompute"]["count"] == layers
    # every layer's backward found (the autograd nodes its forward made); one backward run
    assert host["passes"]["l2a.backward"]["count"] == layers
    assert host["passes"]["backward"]["count"] == 1
    assert host["host_ms_traced"] > 0 and "aten_dispatch" in host["host_ms_by_cause"]
    # host time counted once: no cause below 0, each thread within its span, the whole
    # within wall x threads
    assert min(host["host_ms_by_cause"].values()) >= 0
    assert all(t["traced_ms"] <= t["span_ms"] + 1e-3 for t in host["threads"].values())
    assert host["host_ms_traced"] <= host["wall_ms"] * len(host["threads"])
    assert [t["role"] for t in host["threads"].values()].count("step") == 1
    assert len(r["warm_dense_path_steps_s"]) == 1
    assert r["dense_path_from"] == "warm steps after a warm-up"
    assert r["dense_path_step_s"] == r["warm_dense_path_steps_s"][0]
    assert not list((tmp_path / "runs" / "traces").glob("*.json"))  # traces deleted once read


def _rows(*steps):
    return [{"step": i + 2, "step_time_s": s, "sparsity": 0.8, "dense": dense}
            for i, (s, dense) in enumerate(steps)]


def test_step_time_split_weights_the_dense_path_by_its_probability():
    from bench.train_throughput import step_time_split

    # Routed steps 10 s and 12 s (mean 11), one dense-path step of 30 s; dense_prob 0.1:
    # a long run's step takes 0.9 * 11 + 0.1 * 30 = 12.9 s on average.
    split = step_time_split(_rows((10.0, False), (30.0, True), (12.0, False)), 0.1)
    assert split["routed_step_s"] == 11.0 and split["dense_path_step_s"] == 30.0
    assert abs(split["expected_step_s"] - 12.9) < 1e-12
    # No dense-path step timed: its time is unknown, and so is the expectation.
    assert step_time_split(_rows((10.0, False), (12.0, False)), 0.1) == {
        "routed_step_s": 11.0, "routed_step_median_s": 11.0, "dense_path_step_s": None,
        "dense_path_from": None, "expected_step_s": None}
    # ... unless one ran after the window (before --profile's routed step): 0.9 * 11 + 0.1 * 40.
    later = step_time_split(_rows((10.0, False), (12.0, False)), 0.1, [40.0])
    assert later["dense_path_step_s"] == 40.0 and later["dense_path_from"] == "after the timed steps"
    assert abs(later["expected_step_s"] - 13.9) < 1e-12
    # Warm dense-path steps win over the window's (often the cold first one).
    warm = step_time_split(_rows((10.0, False), (30.0, True)), 0.1, [40.0], [20.0])
    assert warm["dense_path_step_s"] == 20.0 and warm["dense_path_from"] == "warm steps after a warm-up"
    assert abs(warm["expected_step_s"] - 11.0) < 1e-12
    # A dense-path step inside the window wins over a later one.
    assert step_time_split(_rows((10.0, False), (30.0, True)), 0.1, [40.0])["dense_path_step_s"] == 30.0
    # Only dense-path steps timed: no routed mean.
    assert step_time_split(_rows((30.0, True)), 0.1)["expected_step_s"] is None
    # A dense variant (dense_prob 0, no dense flag set): every step is a routed step.
    assert step_time_split(_rows((4.0, False), (6.0, False)), 0.0) == {
        "routed_step_s": 5.0, "routed_step_median_s": 5.0, "dense_path_step_s": None,
        "dense_path_from": None, "expected_step_s": 5.0}
    # One slow routed step among three moves the mean, not the median.
    slow = step_time_split(_rows((35.0, False), (12.0, False), (11.0, False)), 0.0)
    assert slow["routed_step_s"] == 58.0 / 3 and slow["routed_step_median_s"] == 12.0
