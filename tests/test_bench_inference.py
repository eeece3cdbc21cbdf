"""bench.inference runs end to end on the CPU with a tiny shape (so the GPU run cannot die
on a typo) and records what it measured; KV bytes checked from first principles."""

from __future__ import annotations

import json

from bench.inference import TINY, main


def test_tiny_run_writes_every_variant(tmp_path):
    out = tmp_path / "inference.json"
    assert main(["--tiny", "--lengths", "48", "--decode-steps", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"dense_sdpa", "l2a", "l2a_pruned"}
    layers, window = TINY["num_hidden_layers"], report["window"]
    per_token = 2 * TINY["num_key_value_heads"] * TINY["head_dim"] * 4  # k and v, fp32
    kv = {v: r["runs"][0]["kv_bytes_after_prefill"] for v, r in report["results"].items()}
    assert kv["dense_sdpa"] == layers * 48 * per_token
    assert kv["l2a"] == layers * (48 + min(48, window - 1)) * per_token
    kept = layers - len(report["pruned_layers"])
    assert len(report["pruned_layers"]) == layers // 2
    assert kv["l2a_pruned"] == (kept * 48 + layers * min(48, window - 1)) * per_token
    for variant in ("l2a", "l2a_pruned"):
        run = report["results"][variant]["runs"][0]
        assert run["ttft_s"] > 0 and run["decode_tokens_per_s"] > 0
        assert 0.0 < run["routed_fraction_prefill"] < 1.0
    assert report["summary"]["l2a_pruned_kv_ratio_vs_dense"] == round(
        kv["l2a_pruned"] / kv["dense_sdpa"], 4
    )


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["--tiny", "--routed", "1.5", "--out", str(tmp_path / "x.json")]) == 2
    assert "--routed" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
