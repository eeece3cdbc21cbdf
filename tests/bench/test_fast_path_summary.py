"""bench.fast_path_summary: the counts, ratios and step lines of a fast-path GPU run,
from hand-written outputs."""

from __future__ import annotations

import json

from bench.fast_path_summary import main

JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="1"
failures="1" skipped="2" tests="6"><testcase classname="tests.kernels.test_backends" name="test_a[fa4]">
<failure message="AssertionError: grads differ&#10;more">x</failure></testcase>
<testcase classname="t" name="test_b"><error message="CUDA out of memory">y</error></testcase>
<testcase classname="t" name="test_c"/><testcase classname="t" name="test_d"/>
<testcase classname="t" name="test_e"><skipped/></testcase><testcase classname="t" name="test_f"><skipped/></testcase>
</testsuite></testsuites>"""


def _rec(kernel, ms, fraction=1.0, pass_name="fwdbwd", T=131072):
    return {"kernel": kernel, "seq_len": T, "fraction": fraction, "pass": pass_name, "ms": ms, "useful_tflops": 1}


def test_summary_of_a_run(tmp_path, capsys):
    (tmp_path / "tests.xml").write_text(JUNIT)
    records = [_rec("sdpa_cudnn", 900.0), _rec("fa4_dense", 810.0), _rec("local_fa4", 50.0),
               _rec("local_auto", 55.0), _rec("auto_token_sparse", 120.0, 0.2),
               _rec("flex_flash_token_sparse", 160.0, 0.2), _rec("auto_token_sparse", 1.0, 0.2, "fwd"),
               _rec("flex_flash_token_sparse_static", 150.0, 0.2)]
    (tmp_path / "attention.json").write_text(json.dumps({"records": records, "interrupted": True}))
    step = {"step": 2, "step_time_s": 30.04, "sparsity": 0.8, "dense": True}
    train = {"seq_len": "131072", "sequence_parallel": 2, "skip_steps": 1, "speedups": {"l2a_fused/dense": 1.1},
             "routed_speedups": {"l2a_fused/dense": 1.3},
             "results": {"l2a_fused": {"mean_step_s": 30.04, "routed_step_s": 25.0, "pinned_sparsity": 0.8,
                                       "per_step": [step],
                                       "profile_kernel_ms": {"step_wall_ms": 20000.0, "kernel_ms": 8000.0,
                                                             "attention": 3700.0, "matmul": 2400.0,
                                                             "elementwise": 1900.0,
                                                             "cuda_api": {"cpu_ms": {}, "calls": {}}}}}}
    (tmp_path / "train.json").write_text(json.dumps(train))
    # compare's before run beside it; an out-of-memory record is not a train_<name> file.
    before = {"results": {"l2a_fused": {"mean_step_s": 17.0, "routed_step_s": 17.0, "per_step": []}}}
    (tmp_path / "train_before.json").write_text(json.dumps(before))
    (tmp_path / "train.oom_dense.json").write_text("{}")
    assert main([str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert json.loads(capsys.readouterr().out) == summary
    tests = summary["tests"]
    assert (tests["passed"], tests["failures"], tests["errors"], tests["skipped"]) == (2, 1, 1, 2)
    assert tests["failed"] == ["tests.kernels.test_backends::test_a[fa4]: AssertionError: grads differ",
                               "t::test_b: CUDA out of memory"]
    att = summary["attention"]
    assert att["interrupted"] is True
    assert att["ratios"] == {"global_auto_vs_flex_flash@0.2 T=131072": 0.75,
                             "global_auto_vs_flex_flash_static@0.2 T=131072": 0.8,
                             "local_auto_vs_fa4_window T=131072": 1.1, "dense_fa4_vs_cudnn T=131072": 0.9}
    assert summary["train"]["variants"]["l2a_fused"]["per_step"] == ["2: 30.0s sparsity 0.80 dense-path"]
    assert summary["train"]["speedups"] == {"l2a_fused/dense": 1.1}
    assert summary["train"]["routed_speedups"] == {"l2a_fused/dense": 1.3}
    fused = summary["train"]["variants"]["l2a_fused"]
    assert (fused["routed_step_s"], fused["pinned_sparsity"], fused["expected_step_s"]) == (25.0, 0.8, None)
    assert fused["profile"] == {"step_wall_ms": 20000.0, "kernel_ms": 8000.0, "attention": 3700.0,
                                "matmul": 2400.0}
    assert "profile" not in summary["train_before"]["variants"]["l2a_fused"]
    assert set(summary) == {"tests", "attention", "train", "train_before"}
    assert summary["train_before"]["variants"]["l2a_fused"]["routed_step_s"] == 17.0


def test_missing_outputs_are_null(tmp_path):
    assert main([str(tmp_path)]) == 0
    assert json.loads((tmp_path / "summary.json").read_text()) == {"tests": None, "attention": None, "train": None}
