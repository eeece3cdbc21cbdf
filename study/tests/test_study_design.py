"""The study's design in its config and CLI: the sample and seed counts the question needs
(the defaults), the evaluation command that asks for them and composes under `python -m
eval`'s config, the tiny counts of --scale tiny, bases per base seed, run names and records
that say their base, and the per-sample records the eval step writes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from study import steps
from study.samples import load_records


def test_defaults_give_the_counts_the_question_needs():
    # one generated sample moves a model's mean at a length (all tasks) by <= 0.01
    assert 1 / (steps.EVAL_SAMPLES * len(steps.RETRIEVAL_TASKS)) <= 0.01
    assert steps.TEACHER_FORCED_SAMPLES >= 100  # per task, length and model
    assert len(steps.SEEDS) >= 3 and len(steps.BASE_SEEDS) >= 2
    p = argparse.Namespace(scale="full", runs="r", results="res", base_dir="b", max_minutes=None,
                           data_archives=None)
    assert steps.Study(p).samples == (steps.EVAL_SAMPLES, steps.TEACHER_FORCED_SAMPLES)
    assert steps.Study(argparse.Namespace(**{**vars(p), "scale": "tiny"})).samples == (1, 2)
    assert steps.Study(argparse.Namespace(**{**vars(p), "samples": 4,
                                             "teacher_forced_samples": 9})).samples == (4, 9)


def test_eval_command_asks_for_the_counts_and_composes(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from eval.__main__ import CONF_DIR
    from eval.config import build_eval

    argv = steps.eval_command(tmp_path / "m", tmp_path / "out", [2048, 8192], None, 8192,
                              seed=2, samples=(20, 100))
    assert "eval.samples=20" in argv and "eval.teacher_forced.enabled=true" in argv
    assert "eval.teacher_forced.samples=100" in argv
    overrides = [a for a in argv[3:] if not a.startswith("hydra.")]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="t"):
        cfg = compose(config_name="eval_config", overrides=overrides)
    ev = build_eval(OmegaConf.to_container(cfg.eval, resolve=True))
    assert (ev.samples, ev.teacher_forced_samples(), ev.seed) == (20, 100, 2)


@pytest.mark.parametrize("argv, message", [
    (["eval", "--samples", "5", "--teacher-forced-samples", "2"],
     "error: --teacher-forced-samples 2: below --samples 5 (every generated sample is "
     "teacher-forced too)"),
    (["eval", "--samples", "0"], "error: --samples 0: must be at least 1"),
    (["extend", "--base-seeds", "0,x"], "error: --base-seeds: 'x' is not an integer"),
])
def test_cli_count_errors_are_one_line(argv, message, tmp_path, capsys):
    rc = steps.main([*argv, "--results", str(tmp_path / "res"), "--base-dir", str(tmp_path / "b")])
    assert rc == 1 and capsys.readouterr().err.strip().splitlines() == [message]


@pytest.mark.parametrize("run", ["my-run", ""])  # a run's own folder, or straight in res/
def test_per_sample_records_go_where_the_report_reads_them(run, tmp_path, monkeypatch):
    """eval without --samples-dir writes a run's records into <results>/samples/, and report
    without --samples-dir reads them there: the page's answer has intervals from them."""
    _base(tmp_path / "base")
    results = tmp_path / "res" / run
    args = argparse.Namespace(scale="tiny", runs=str(tmp_path / "runs"), results=str(results),
                              base_dir=str(tmp_path / "base"), max_minutes=None,
                              data_archives=None)
    s = steps.Study(args, runner=_train_runner([]))
    assert s.samples_dir == results / "samples"
    s.extend(["dense"], ["16k"], [0], [0])
    monkeypatch.setattr(steps, "kv_bytes", lambda d, n: {})
    s.evaluate(base_seeds=[0])
    assert [p.name for p in (results / "samples").iterdir()] == ["dense-16k-base0-seed0-pruned0.jsonl.gz"]
    rc = steps.main(["report", "--results", str(tmp_path / "res"), "--out", str(tmp_path / "R.md")])
    page = (tmp_path / "R.md").read_text()
    assert rc == 0 and f"per-sample lines `{Path('res', run, 'samples')}/`" in page
    assert "has no per-sample records" not in page


def _train_runner(calls):
    """Stands in for `python -m train` (records argv and env, writes 1 step of metrics) and
    for `python -m eval` (writes a results.json of two samples)."""
    def runner(argv, log, max_seconds=None, env=None):
        calls.append((argv, dict(env or {})))
        out = Path(next(a for a in argv if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        out.mkdir(parents=True, exist_ok=True)
        if argv[2] == "eval":
            seed = int(next(a for a in argv if a.startswith("eval.seed=")).split("=")[1])
            (out / "results.json").write_text(json.dumps({"config": {"seed": seed}, "tasks": [
                {"task": "niah_single", "length": 512, "depth": "all", "score": 0.5}], "samples": [
                {"task": "niah_single", "length": 512, "depth": 0.5, "index": i, "generated": i == 0,
                 "score": 0.5 if i == 0 else None, "answer_loglik": -1.0, "answer_tokens": 2,
                 "token_accuracy": 0.5} for i in range(2)]}))
        else:
            (out / "metrics.jsonl").write_text(json.dumps(
                {"step": 1, "tokens": 10, "step_time_s": 1.0, "lm_loss": 1.0}) + "\n")
        return 0, 1.0
    return runner


def _base(d: Path):
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")


def test_every_base_seed_has_its_base_runs_and_records(tmp_path, monkeypatch):
    _base(tmp_path / "base")
    _base(tmp_path / "base-seed1")
    calls = []
    args = argparse.Namespace(scale="tiny", runs=str(tmp_path / "runs"),
                              results=str(tmp_path / "res"), base_dir=str(tmp_path / "base"),
                              max_minutes=None, data_archives=None,
                              samples_dir=str(tmp_path / "samples"))
    s = steps.Study(args, runner=_train_runner(calls))
    s.extend(["l2a_s08"], ["16k"], [0, 2], [0, 1])
    bases = [(Path(a[-1].split("=", 1)[1]).name, env["L2A_STUDY_BASE"]) for a, env in calls]
    assert bases == [("l2a_s08-16k-seed0", str(tmp_path / "base")),
                     ("l2a_s08-16k-seed2", str(tmp_path / "base")),
                     ("l2a_s08-16k-base1-seed0", str(tmp_path / "base-seed1")),
                     ("l2a_s08-16k-base1-seed2", str(tmp_path / "base-seed1"))]
    rec = json.loads(s.run_path("l2a_s08", "16k", 2, 1).read_text())
    assert rec["base_seed"] == 1 and rec["seed"] == 2
    assert s.run_path("l2a_s08", "16k", 2, 1).name == "run-l2a_s08-16k-base1-seed2.json"
    assert [r["base_seed"] for _, r in s._records(base_seeds=[1])] == [1, 1]
    # eval: per-sample lines of every model, named by base and seed, pointed at by the record
    monkeypatch.setattr(steps, "kv_bytes", lambda d, n: {})
    s.evaluate(base_seeds=[1])
    lines = load_records(tmp_path / "samples")
    assert sorted({(x["base_seed"], x["seed"], x["eval_seed"]) for x in lines}) == [(1, 0, 0), (1, 2, 2)]
    assert [(x["generated"], x["em"], x["token_acc"]) for x in lines[:2]] == [(True, 0.5, 0.5),
                                                                           (False, None, 0.5)]
    ev = json.loads(s.run_path("l2a_s08", "16k", 0, 1).read_text())["evals"]["0.0"]
    assert Path(ev["samples_file"]).name == "l2a_s08-16k-base1-seed0-pruned0.jsonl.gz"
    assert not json.loads(s.run_path("l2a_s08", "16k", 0).read_text())["evals"]  # base 0: not asked


def test_a_missing_base_is_named_with_its_seed(tmp_path):
    _base(tmp_path / "base")
    args = argparse.Namespace(scale="tiny", runs=str(tmp_path / "runs"), results=str(tmp_path / "r"),
                              base_dir=str(tmp_path / "base"), max_minutes=None, data_archives=None)
    with pytest.raises(steps.StudyError, match=r"base-seed1: no base model of base seed 1; run "
                                               r"`python -m study pretrain --base-seeds 1`"):
        steps.Study(args, runner=_train_runner([])).extend(["dense"], ["8k"], [0], [0, 1])
