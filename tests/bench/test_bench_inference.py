"""bench.inference runs end to end on the CPU with a tiny shape (so the GPU run cannot die
on a typo) and records what it measured; KV bytes checked from first principles."""

from __future__ import annotations

import json

import pytest

from bench.inference import TINY, main


def test_tiny_run_writes_every_variant(tmp_path):
    out = tmp_path / "inference.json"
    assert main(["--tiny", "--lengths", "48", "--decode-steps", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"dense_sdpa", "l2a", "l2a_routed_proj", "l2a_pruned"}
    layers, window = TINY["num_hidden_layers"], report["window"]
    per_token = 2 * TINY["num_key_value_heads"] * TINY["head_dim"] * 4  # k and v, fp32
    kv = {v: r["runs"][0]["kv_bytes_after_prefill"] for v, r in report["results"].items()}
    assert kv["dense_sdpa"] == layers * 48 * per_token
    assert kv["l2a"] == layers * (48 + min(48, window - 1)) * per_token
    assert kv["l2a_routed_proj"] == kv["l2a"]
    kept = layers - len(report["pruned_layers"])
    assert len(report["pruned_layers"]) == layers // 2
    assert kv["l2a_pruned"] == (kept * 48 + layers * min(48, window - 1)) * per_token
    options = {v: r["options"].get("routed_projections") for v, r in report["results"].items()}
    assert options == {"dense_sdpa": None, "l2a": False, "l2a_routed_proj": True, "l2a_pruned": True}
    assert report["options"]["projections"] == ["full", "routed"]
    for variant in ("l2a", "l2a_routed_proj", "l2a_pruned"):
        run = report["results"][variant]["runs"][0]
        assert run["ttft_s"] > 0 and run["decode_tokens_per_s"] > 0
        assert 0.0 < run["routed_fraction_prefill"] < 1.0
    assert report["summary"]["l2a_pruned_kv_ratio_vs_dense"] == round(
        kv["l2a_pruned"] / kv["dense_sdpa"], 4
    )


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["--tiny", "--routed", "1.5", "--out", str(tmp_path / "x.json")]) == 2
    assert "--routed" in capsys.readouterr().err
    assert main(["--tiny", "--projections", "sparse", "--out", str(tmp_path / "x.json")]) == 2
    assert "--projections" in capsys.readouterr().err
    assert main(["--tiny", "--profile-prefill", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert "--profile-prefill" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_projection_modes_reach_the_model(tmp_path, monkeypatch):
    """--projections routed runs the routed-only global branch in the prefill, full never."""
    from l2a.layers import L2ABranchAttention

    calls = []
    original = L2ABranchAttention.forward_routed

    def counting(self, *args, **kwargs):
        calls.append(args[0].shape[1])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(L2ABranchAttention, "forward_routed", counting)
    common = ["--tiny", "--lengths", "48", "--decode-steps", "1", "--variants", "l2a"]
    assert main([*common, "--projections", "full", "--out", str(tmp_path / "a.json")]) == 0
    assert calls == []
    assert main([*common, "--projections", "routed", "--out", str(tmp_path / "b.json")]) == 0
    assert 48 in calls  # the 48-token prefill (not only the short warm-up)
    report = json.loads((tmp_path / "b.json").read_text())
    assert set(report["results"]) == {"l2a_routed_proj"}


def test_profile_prefill_records_kernel_time_by_category(tmp_path):
    from bench.prefill_profile import CATEGORIES

    out = tmp_path / "p.json"
    args = ["--tiny", "--lengths", "48", "--decode-steps", "1", "--variants", "l2a",
            "--projections", "routed", "--profile-prefill", "64", "--out", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["options"]["profile_prefill"] == 64
    prof = report["results"]["l2a_routed_proj"]["profile"]
    assert prof["length"] == 64 and set(prof["kernel_ms"]) == set(CATEGORIES)
    assert abs(sum(prof["kernel_ms"].values()) - prof["kernel_ms_total"]) < 0.01
    assert prof["kernel_ms"]["matmul"] > 0  # the projections and the MLP are matmuls
    top = [k["ms"] for k in prof["top_kernels"]]
    assert 0 < len(top) <= 25 and top == sorted(top, reverse=True)


def test_a_variant_that_fails_its_warm_up_is_recorded(tmp_path, monkeypatch):
    """A variant whose warm-up raises (a compile failure of the fused variant, say) leaves
    an error in the report; the others still run."""
    import bench.inference as bench

    real = bench.measure

    def failing(model, *args, **kwargs):
        if model.l2a_runtime.fused_elementwise:
            raise RuntimeError("compile failed\nsecond line")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(bench, "measure", failing)
    out = tmp_path / "f.json"
    args = ["--tiny", "--lengths", "48", "--decode-steps", "1", "--variants", "l2a",
            "--projections", "routed_fused", "routed", "--out", str(out)]
    assert main(args) == 0
    results = json.loads(out.read_text())["results"]
    assert results["l2a_routed_proj_fused"]["error"] == "warm-up: compile failed"
    assert results["l2a_routed_proj_fused"]["options"]["fused_elementwise"] is True
    assert results["l2a_routed_proj"]["runs"][0]["ttft_s"] > 0


def test_warm_up_runs_until_nothing_compiles(monkeypatch):
    """Warm-up prefills continue while they compile graphs (here the first two do), at
    lengths that differ from each other and are prefills, not decoding steps."""
    import argparse

    import bench.inference as bench
    from kernels.decode import DECODE_MAX_QUERIES

    compiled, seen = [0], []

    def fake_measure(model, make_cache, length, decode_steps, device, context, seed):
        seen.append((length, seed))
        compiled[0] += 3 if len(seen) <= 2 else 0
        return {"ttft_s": 0.5}

    monkeypatch.setattr(bench, "measure", fake_measure)
    monkeypatch.setattr(bench, "compile_count", lambda: compiled[0])
    rows = bench.warm_up(None, None, [4096, 8192], argparse.Namespace(calib_len=4096), None)
    assert [r["compiles"] for r in rows] == [3, 3, 0]
    lengths = [r["length"] for r in rows]
    assert lengths[0] == 4096 and len(set(lengths)) == 3
    assert min(lengths) > DECODE_MAX_QUERIES
    assert len({seed for _, seed in seen}) == 3  # other prompts, hence other routed counts
    # Never more than WARM_UP_MAX, even if every prefill compiles.
    monkeypatch.setattr(bench, "compile_count", lambda: len(seen))
    rows = bench.warm_up(None, None, [32], argparse.Namespace(calib_len=64), None)
    assert len(rows) == bench.WARM_UP_MAX and min(r["length"] for r in rows) > DECODE_MAX_QUERIES


def test_fused_variant_compiles_in_the_warm_up_only(tmp_path):
    """The fused variant end to end (Inductor on the CPU): its graphs are compiled in the
    warm-up, whose first prompt is as long as the model is wide (64 tokens, as 4096 on
    Qwen3-8B), and no timed prefill of another length compiles anything."""
    out = tmp_path / "fused.json"
    args = ["--tiny", "--lengths", "96", "160", "--decode-steps", "1", "--variants", "l2a",
            "--projections", "routed_fused", "--out", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    result = report["results"]["l2a_routed_proj_fused"]
    assert report["model_shape"]["hidden_size"] == result["warm_up"][0]["length"] == 64
    assert result["warm_up"][0]["compiles"] > 0 and result["warm_up"][-1]["compiles"] == 0
    assert [run["compiles"] for run in result["runs"]] == [0, 0]


def test_decode_rows_per_mode_and_batch_with_the_bytes_a_step_reads(tmp_path):
    """Every mode x batch is timed (median of the requested steps) and its bytes counted
    from first principles: weights (the embedding only for the rows looked up) plus the
    keys a step needs: dense all of them, L2A its window and the global keys of the rows
    that routed."""
    out = tmp_path / "d.json"
    args = ["--tiny", "--lengths", "48", "--decode-steps", "3", "--variants", "dense", "l2a",
            "--projections", "full", "--batches", "1", "2", "--out", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["copy_gb_per_s"] > 0 and report["fallbacks"] == []
    layers, heads, D, H, V = (TINY[k] for k in ("num_hidden_layers", "num_key_value_heads",
                                                 "head_dim", "hidden_size", "vocab_size"))
    per_token = 2 * heads * D * 4
    context = 48 + 1 + 3 // 2  # prompt, warm-up step, the median timed step
    window = report["window"]
    for variant in ("dense_sdpa", "l2a"):
        rows = report["results"][variant]["runs"][0]["decode"]
        assert {(r["mode"], r["batch"]) for r in rows} == {(m, b) for m in ("eager", "graph") for b in (1, 2)}
        for r in rows:
            assert r["steps"] == 3 and r["ms_per_token"] > 0
            assert r["tokens_per_s"] == pytest.approx(r["batch"] * 1000 / r["ms_per_token"], rel=0.01)
            assert r["bytes_per_step"] == r["weight_bytes_per_step"] + r["kv_bytes_per_step"]
            if variant == "dense_sdpa":
                assert r["kv_bytes_per_step"] == layers * context * r["batch"] * per_token
                # graph mode: the dense base decodes on the same split-KV kernels as L2A
                assert r.get("decode_attention") == ("split_kv" if r["mode"] == "graph" else None)
            else:
                local = layers * min(context, window) * r["batch"] * per_token
                glob = r["kv_bytes_per_step"] - local
                # Routed rows read the whole global cache, unrouted ones none of it.
                assert glob == pytest.approx(r["routed_fraction_decode"] * layers * r["batch"] * context * per_token, abs=layers * per_token)
    dense = report["results"]["dense_sdpa"]["runs"][0]["decode"][0]
    # Dense weights: embedding rows, per layer q/k/v/o + MLP + 2 norms + qk norms, final norm, lm_head.
    I = TINY["intermediate_size"]
    qo = 2 * H * TINY["num_attention_heads"] * D
    kv = 2 * H * heads * D
    per_layer = qo + kv + 3 * H * I + 2 * H + 2 * D
    weights = (dense["batch"] * H + layers * per_layer + H + V * H) * 4
    assert dense["weight_bytes_per_step"] == weights


def test_summary_compares_against_the_fastest_dense_of_each_kind():
    """Prefill against the fastest dense prefill, decoding against the fastest dense decoding
    of its mode and batch: the dense variant with the fastest prefill may decode slowest."""
    from bench.inference import _summary

    def run(ttft, decode):
        rows = [{"mode": m, "requested_batch": 1, "ms_per_token": ms} for m, ms in decode.items()]
        return {"runs": [{"length": 64, "ttft_s": ttft, "kv_bytes_after_prefill": 100, "decode": rows}]}

    results = {
        "dense_sdpa": run(13.0, {"eager": 36.0, "graph": 12.0}),
        "dense_fa4": run(11.5, {"eager": 84.0, "graph": 20.0}),
        "l2a": run(7.0, {"eager": 60.0, "graph": 8.0}),
    }
    s = _summary(results, 64)
    assert s["fastest_dense_prefill"] == "dense_fa4"
    assert s["l2a_prefill_speedup_vs_fastest_dense"] == round(11.5 / 7.0, 3)
    assert s["fastest_dense_decode_eager_b1"] == "dense_sdpa"
    assert s["l2a_decode_eager_b1_speedup_vs_fastest_dense"] == round(36.0 / 60.0, 3)
    assert s["l2a_decode_graph_b1_speedup_vs_fastest_dense"] == round(12.0 / 8.0, 3)


def test_bad_decode_arguments_exit_2(tmp_path, capsys):
    assert main(["--tiny", "--decode-modes", "compiled", "--out", str(tmp_path / "x.json")]) == 2
    assert "--decode-modes" in capsys.readouterr().err
    assert main(["--tiny", "--batches", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert "--batches" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
