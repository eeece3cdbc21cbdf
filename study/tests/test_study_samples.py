"""study.samples: the per-sample lines of an evaluation (generated and teacher-forced-only
samples, results from before the teacher-forced scores), a bad records file as one line,
and the lines derived from an older run's kept results.json."""

from __future__ import annotations

import json

import pytest

from study import steps
from study.samples import (
    FROM_LOGS,
    SamplesError,
    derive_from_logs,
    file_name,
    load_records,
    records_from_results,
)

RESULTS = {"config": {"seed": 3}, "samples": [
    {"task": "niah_single", "length": 2048, "depth": 0.5, "index": 0, "generated": True,
     "score": 1.0, "answer_loglik": -0.5, "answer_tokens": 9, "token_accuracy": 1.0},
    {"task": "variable_tracking", "length": 2048, "depth": None, "index": 4, "generated": False,
     "score": None, "answer_loglik": -20.0, "answer_tokens": 30, "token_accuracy": 0.4},
    {"task": "niah_multikey", "length": 8192, "depth": 0.5, "index": 0, "score": 0.5}]}


def test_one_line_per_sample_with_its_model_and_prompt():
    lines = records_from_results(RESULTS, arm="l2a_s08", train_length=16384, base_seed=1,
                                 seed=2, pruned=0.25)
    common = {"arm": "l2a_s08", "train_length": 16384, "base_seed": 1, "seed": 2,
              "pruned": 0.25, "eval_seed": 3, "source": "python -m eval results.json"}
    assert lines == [
        {**common, "eval_length": 2048, "task": "niah_single", "depth": 0.5, "index": 0,
         "sample_id": "niah_single/2048/0.5/0", "generated": True, "em": 1.0,
         "answer_loglik": -0.5, "answer_tokens": 9, "token_acc": 1.0},
        {**common, "eval_length": 2048, "task": "variable_tracking", "depth": None, "index": 4,
         "sample_id": "variable_tracking/2048/-/4", "generated": False, "em": None,
         "answer_loglik": -20.0, "answer_tokens": 30, "token_acc": 0.4},
        # results from before eval.teacher_forced: generated, no teacher-forced scores
        {**common, "eval_length": 8192, "task": "niah_multikey", "depth": 0.5, "index": 0,
         "sample_id": "niah_multikey/8192/0.5/0", "generated": True, "em": 0.5,
         "answer_loglik": None, "answer_tokens": None, "token_acc": None}]
    assert file_name("l2a_s08", 16384, 1, 2, 0.25) == "l2a_s08-16k-base1-seed2-pruned0.25.jsonl"


def test_a_bad_records_file_is_one_line(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"arm": "dense"}\n')
    with pytest.raises(SamplesError, match=r"a\.jsonl:1: no 'train_length'$"):
        load_records(tmp_path)
    (tmp_path / "a.jsonl").write_text("\n{oops\n")
    with pytest.raises(SamplesError, match=r"a\.jsonl:2: not JSON"):
        load_records(tmp_path)
    assert load_records(tmp_path / "absent") == []


def test_report_cli_error_on_bad_records_is_one_line(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "run-dense-16k-seed0.json").write_text(json.dumps(
        {"arm": "dense", "train_length": 16384, "seed": 0, "train": {}, "evals": {}}))
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "x.jsonl").write_text("nope\n")
    rc = steps.main(["report", "--results", str(tmp_path / "results"), "--samples-dir",
                     str(tmp_path / "samples"), "--out", str(tmp_path / "RESULTS.md")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: ") and "x.jsonl:1: not JSON" in err[0]
    assert not (tmp_path / "RESULTS.md").exists()


def test_derived_from_an_older_runs_logs(tmp_path):
    logs = tmp_path / "run" / "logs"
    logs.mkdir(parents=True)
    (logs / "eval-results-l2a_s09-8k-seed1.json").write_text(json.dumps(RESULTS))
    (logs / "eval-dense-8k-seed1.log").write_text("not a results file")
    [made] = derive_from_logs(tmp_path / "run", tmp_path / "out")
    assert made.name == "l2a_s09-8k-base0-seed1-pruned0.jsonl"
    lines = load_records(tmp_path / "out")
    assert [(x["arm"], x["train_length"], x["seed"], x["base_seed"], x["pruned"]) for x in lines] \
        == [("l2a_s09", 8192, 1, 0, 0.0)] * 3
    assert {x["source"] for x in lines} == {FROM_LOGS}


def test_derive_cli_without_results_is_one_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    rc = steps.main(["derive-samples", "--results", str(tmp_path / "run"),
                     "--samples-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "no eval-results-*.json" in err[0]
    assert not (tmp_path / "out").exists()
