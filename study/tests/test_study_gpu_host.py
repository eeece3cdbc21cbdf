"""study.gpu_host, the study on a GPU host, without training anything: how runs are
spread over GPUs and slots, the deadline (runs not started, steps skipped, the run still
ends with its tar), the training overrides and time cap a run gets, and what the tar holds."""

from __future__ import annotations

import argparse
import json
import tarfile
import time
from pathlib import Path

import pytest

from study import gpu_host
from study import steps as study


def test_plan_spreads_runs_over_gpus_and_slots():
    arms = ["dense", "l2a", "l2a_s08", "l2a_s09"]
    slots = gpu_host.plan(arms, ["16k"], [0, 1], ["0", "1"], per_gpu=4)
    assert len(slots) == 8 and all(len(q) == 1 for _, q in slots)  # all 8 at once
    runs = [r for _, q in slots for r in q]
    assert sorted(runs) == sorted((a, "16k", s) for a in arms for s in (0, 1))  # each once
    for gpu in ("0", "1"):
        assert sum(len(q) for g, q in slots if g == gpu) == 4
    # Fewer slots than runs: queues of two per slot, still four runs per GPU.
    slots = gpu_host.plan(arms, ["16k"], [0, 1], ["0", "1"], per_gpu=2)
    assert [len(q) for _, q in slots] == [2, 2, 2, 2]
    assert sorted(g for g, _ in slots) == ["0", "0", "1", "1"]
    # CPU: no GPU named, `per_gpu` slots.
    slots = gpu_host.plan(arms[:2], ["16k"], [0], [], per_gpu=2)
    assert [(g, len(q)) for g, q in slots] == [(None, 1), (None, 1)]


def test_gpu_list_keeps_the_parents_device_names(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # a child given "0" would use GPU 0
    assert gpu_host.gpu_list(None) == ["1"]
    assert gpu_host.gpu_list("0,1") == ["0", "1"]


def _fake_train_runner(calls):
    """Stands in for `python -m study.train_prepared`: records the call, writes 2 steps of
    metrics (1,000 tokens each, 0.5 s each) and exits 0."""
    def runner(argv, log, max_seconds=None, env=None):
        calls.append((argv, max_seconds, env))
        run_dir = Path(next(a for a in argv if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        run_dir.mkdir(parents=True)
        rows = [{"step": i, "tokens": 1000 * i, "step_time_s": 0.5, "lm_loss": 2.0 / i}
                for i in (1, 2)]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("ok\n")
        return 0, 1.0
    return runner


def _args(tmp_path, **over):
    base = dict(scale="tiny", runs=str(tmp_path / "runs"), results=str(tmp_path / "results"),
                base_dir=str(tmp_path / "base"), max_minutes=None,
                data_archives=str(tmp_path / "archives"), data_unpacked=True)
    return argparse.Namespace(**{**base, **over})


def test_run_gets_the_step_count_its_gpu_and_a_cap_before_the_deadline(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}")
    calls = []
    deadline = time.time() + 600
    s = study.Study(_args(tmp_path, deadline=deadline, reserve_s=180, max_minutes=20,
                          train_overrides=["train.max_steps=7"],
                          env={"CUDA_VISIBLE_DEVICES": "1"}), runner=_fake_train_runner(calls))
    s.extend(["l2a_s08"], ["16k"], [1])
    [(argv, cap, env)] = calls
    assert argv[1:3] == ["-m", "study.train_prepared"]  # unpacked already: no archive needed
    steps = [a for a in argv if a.startswith("train.max_steps=")]
    assert steps[-1] == "train.max_steps=7"  # the last one wins over --scale tiny's 3
    assert 600 - 180 - 5 < cap <= 600 - 180  # deadline less the reserve, not --max-minutes
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    rec = json.loads(s.run_path("l2a_s08", "16k", 1).read_text())["train"]
    assert rec["steps"] == 2 and rec["tokens_per_s"] == 2000  # 2,000 tokens in 1 s of steps


def test_past_the_deadline_runs_are_not_started_and_the_tar_is_written(tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.setenv("L2A_DATA_DIR", str(tmp_path / "unpacked"))
    # An archive with one data set and a base whose bundle holds the pretraining record.
    (tmp_path / "data" / "prepared" / "study_tiny-512").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "study_tiny-512" / "meta.json").write_text("{}")
    (tmp_path / "archives").mkdir()
    with tarfile.open(tmp_path / "archives" / "study-512.tar.xz", "w:xz") as tar:
        tar.add(tmp_path / "data" / "prepared", arcname="prepared")
    base = tmp_path / "base"
    base.mkdir()
    (tmp_path / "pre.json").write_text(json.dumps({"step": "pretrain", "seed": 0}))
    (tmp_path / "config.json").write_text("{}")
    with tarfile.open(base / study.BASE_BUNDLE, "w") as tar:
        tar.add(tmp_path / "config.json", arcname="config.json")
        tar.add(tmp_path / "pre.json", arcname="study-results/pretrain-seed0.json")
    out = tmp_path / "out"
    rc = gpu_host.main([
        "arms", "--scale", "tiny", "--out", str(out), "--data-archives", str(tmp_path / "archives"),
        "--base-dir", str(base), "--runs", str(tmp_path / "runs"), "--arms", "dense,l2a",
        "--seeds", "0", "--per-gpu", "2", "--gpus", "", "--deadline-minutes", "1",
        "--started-at", str(time.time() - 120)])
    assert rc == 0
    assert (tmp_path / "unpacked" / "prepared" / "study_tiny-512" / "meta.json").exists()
    assert list(out.iterdir()) == [out / gpu_host.TAR_NAME]  # the results folder: one archive
    with tarfile.open(out / gpu_host.TAR_NAME) as tar:
        names = sorted(tar.getnames())
        summary = json.load(tar.extractfile("results/arms-summary.json"))
    assert names == ["results/arms-summary.json", "results/pretrain-seed0.json"]
    for name in ("dense-16k-seed0", "l2a-16k-seed0"):
        run = summary["runs"][name]
        assert run["completed"] is False and "not started" in run["error"]
    printed = capsys.readouterr().out
    assert "dense-16k-seed0: not trained: " in printed and "packed " in printed


def test_pack_keeps_records_and_reports_not_weights(tmp_path, monkeypatch):
    # The layout study.gpu_host leaves: <runs>/<run>/ is one run's `python -m study --runs`,
    # holding logs/<run>.log and the run directory <run>/ (its evaluations, pruned models).
    runs, results = tmp_path / "runs", tmp_path / "runs" / "results"
    r = "dense-16k-seed0/dense-16k-seed0"
    files = {
        "results/run-dense-16k-seed0.json": "{}",
        "results/samples/dense-16k-base0-seed0-pruned0.jsonl.gz": "{}\n",  # per-sample records
        "dense-16k-seed0/logs/dense-16k-seed0.log": "log",
        f"{r}/metrics.jsonl": "{}",
        f"{r}/summary.json": "{}",
        f"{r}/eval.log": "log",
        f"{r}/eval/results.json": "{}",
        f"{r}/eval/.hydra/config.yaml": "{}",
        f"{r}/pruned-0.5/prune_report.json": "{}",
        f"{r}/pruned-0.5/config.json": "{}",  # a model: stays
        f"{r}/export/config.json": "{}",
        f"{r}/export/model.safetensors": "x" * 100,
        f"{r}/checkpoints/step_00000003/state.json": "x",
    }
    for rel, text in files.items():
        (runs / rel).parent.mkdir(parents=True, exist_ok=True)
        (runs / rel).write_text(text)
    tar = gpu_host.pack(tmp_path / "out" / "t.tar.gz", results, runs, tmp_path / "nobase")
    with tarfile.open(tar) as t:
        names = sorted(t.getnames())
    assert names == sorted(["results/run-dense-16k-seed0.json",
                            "results/samples/dense-16k-base0-seed0-pruned0.jsonl.gz",
                            "runs/dense-16k-seed0/logs/dense-16k-seed0.log",
                            *(f"runs/{r}/{f}" for f in ("metrics.jsonl", "summary.json", "eval.log",
                                                         "eval/results.json",
                                                         "pruned-0.5/prune_report.json"))])
    monkeypatch.setattr(gpu_host, "MAX_TAR_BYTES", 1)  # too big: the logs stay behind
    tar = gpu_host.pack(tmp_path / "out" / "t.tar.gz", results, runs, tmp_path / "nobase")
    with tarfile.open(tar) as t:
        assert not [n for n in t.getnames() if n.endswith(".log")]
        assert "results/run-dense-16k-seed0.json" in t.getnames()


def test_summary_line_per_run(tmp_path, capsys):
    results = tmp_path / "results"
    study.write_json(results / "run-l2a-16k-seed1.json", {
        "train": {"steps": 120, "tokens": 15728640, "tokens_per_s": 91000,
                  "final_lm_loss": 1.25, "sparsity": 0.81, "completed": False, "wall_s": 300},
        "evals": {"0.0": {"retrieval": {"16384": 0.5, "2048": 1.0}},
                  "0.5": {"skipped": "no time left before the deadline"}}})
    s = gpu_host.summarize(results, ["l2a-16k-seed1", "dense-16k-seed1"],
                               {"dense-16k-seed1": "dense-16k-seed1: exit 1: boom"})
    gpu_host.print_summary(s)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "l2a-16k-seed1: 120 steps (stopped), 91,000 tokens/s, lm loss 1.2500, sparsity 0.810"
        " | pruned 0.0: 2048:1.00 16384:0.50 | pruned 0.5: no time left before the deadline",
        "dense-16k-seed1: not trained: dense-16k-seed1: exit 1: boom"]


@pytest.mark.parametrize("mode", ["pretrain", "arms"])
def test_out_is_required(mode, monkeypatch, capsys):
    # Only the argument names the results folder: an OUT in the environment is nobody's.
    monkeypatch.setenv("OUT", "/nonexistent/out")
    assert gpu_host.main([mode]) == 2
    assert capsys.readouterr().err.strip() == "error: --out: give the results folder"


def test_without_a_deadline_threads_are_waited_for_to_their_end():
    # Thread.join(None) waits for the end; a number is how long until the deadline less the
    # margin, never negative.
    assert gpu_host.until_deadline(argparse.Namespace(deadline=None), 15.0) is None
    left = gpu_host.until_deadline(argparse.Namespace(deadline=time.time() + 100.0), 15.0)
    assert 80.0 < left <= 85.0
    assert gpu_host.until_deadline(argparse.Namespace(deadline=time.time() - 5.0), 15.0) == 0.0


def test_evaluation_and_pruning_past_the_deadline_are_skipped_not_run(tmp_path):
    def runner(*a, **k):
        raise AssertionError("nothing may start past the deadline")

    s = study.Study(_args(tmp_path, deadline=time.time() + study.STOP_GRACE_S), runner=runner)
    study.write_json(s.run_path("l2a", "16k", 0), {
        "arm": "l2a", "train_length": 16384, "seed": 0, "scale": "tiny", "evals": {},
        "train": {"run_dir": str(tmp_path / "r"), "export_dir": str(tmp_path / "r" / "export")}})
    s.evaluate()
    s.prune()
    evals = json.loads(s.run_path("l2a", "16k", 0).read_text())["evals"]
    skipped = {"skipped": "no time left before the deadline"}
    assert evals == {"0.0": skipped, "0.25": skipped, "0.5": skipped}


RACE = """
import sys, threading
from study import steps as study
if sys.argv[2] == "preload":
    study.import_for_threads()
barrier, errors = threading.Barrier(8), []
def one():
    barrier.wait()
    try:
        study.kv_bytes(sys.argv[1], [1024])
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=one) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
print(len(errors), errors[:1])
"""


def test_threads_compute_kv_bytes_without_an_import_race(tmp_path):
    """8 threads of a fresh interpreter at once in `kv_bytes` (what an arms run's threads do
    when their evaluations end together) after `import_for_threads`: no ImportError. Without
    it, "cannot import name 'AutoConfig' from 'transformers'" (seen on a GPU host)."""
    import subprocess
    import sys

    from transformers import Qwen3Config

    Qwen3Config(num_hidden_layers=2, num_key_value_heads=2, num_attention_heads=4,
                hidden_size=64, head_dim=16).save_pretrained(tmp_path)
    out = subprocess.run([sys.executable, "-c", RACE, str(tmp_path), "preload"],
                         cwd=study.ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == "0", out.stdout


def test_eval_jobs_unpruned_first_then_the_larger_pruning():
    runs = [("dense", "16k", 0), ("l2a", "16k", 0), ("l2a_s08", "16k", 1)]
    assert gpu_host.eval_jobs(runs) == [
        ("dense", "16k", 0, 0.0), ("l2a", "16k", 0, 0.0), ("l2a_s08", "16k", 1, 0.0),
        ("l2a", "16k", 0, 0.5), ("l2a_s08", "16k", 1, 0.5),
        ("l2a", "16k", 0, 0.25), ("l2a_s08", "16k", 1, 0.25)]


def test_eval_workers_share_one_queue_and_write_every_record(tmp_path):
    """Two workers (two GPUs) on one queue: each job's result lands in its run's record, none
    lost to two workers writing one record; a job is run on the worker's GPU."""
    import queue
    import threading

    calls = []

    def runner(argv, log, max_seconds=None, env=None):
        calls.append((argv[2], env["CUDA_VISIBLE_DEVICES"]))
        if argv[2] == "eval":
            out = Path(next(x for x in argv if x.startswith("hydra.run.dir=")).split("=", 1)[1])
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps({"tasks": [
                {"task": "niah_single", "length": 512, "depth": "all", "score": 1.0}]}))
        else:  # train.prune
            Path(argv[argv.index("--out") + 1]).mkdir(parents=True, exist_ok=True)
        time.sleep(0.05)
        return 0, 0.05

    a = argparse.Namespace(**{**vars(_args(tmp_path)), "max_steps": None, "deadline": None,
                              "reserve_minutes": 0.0, "base_seed": 0})
    a.runs, a.results = tmp_path / "runs", tmp_path / "results"
    # One L2A run: its pruned jobs run at once on the two workers, both updating its record.
    runs = [("l2a", "16k", 0), ("dense", "16k", 1)]
    for arm, length, seed in runs:
        rd = tmp_path / "runs" / f"{arm}-{length}-seed{seed}"
        study.write_json(a.results / f"run-{arm}-{length}-seed{seed}.json", {
            "arm": arm, "train_length": 16384, "seed": seed, "scale": "tiny", "evals": {},
            "train": {"run_dir": str(rd), "export_dir": str(rd / "export")}})
    jobs = queue.Queue()
    for job in gpu_host.eval_jobs(runs):
        jobs.put(job)
    orig = gpu_host.runner
    gpu_host.runner = runner
    try:
        import unittest.mock as mock

        with mock.patch.object(study, "kv_bytes", lambda d, n: {}):
            workers = [threading.Thread(target=gpu_host.eval_worker, args=(a, jobs, g, {}))
                       for g in ("0", "1")]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
    finally:
        gpu_host.runner = orig
    for arm, length, seed in runs:
        evals = json.loads((a.results / f"run-{arm}-{length}-seed{seed}.json").read_text())["evals"]
        want = ["0.0"] if arm == "dense" else ["0.0", "0.25", "0.5"]
        assert sorted(evals) == want
        assert all(e["retrieval"] == {"512": 1.0} for e in evals.values())
    assert sorted(c[0] for c in calls) == ["eval"] * 4 + ["train.prune"] * 2
    assert {c[1] for c in calls} == {"0", "1"}


def test_a_stopped_evaluation_keeps_the_samples_it_scored(tmp_path):
    log = tmp_path / "eval.log"
    log.write_text(  # the lines eval/generation.py logs, as in a GPU run's log cut by the deadline
        "model: x (L2AQwen3ForCausalLM, torch.bfloat16, cuda:0)\n"
        "perplexity at length 2048: loss 1.2346\n"
        "[1/20] niah_single length 2048 depth 0.5: score 1.00 (2.1s)\n"
        "[5/20] variable_tracking length 2048: score 0.40 (0.5s)\n"
        "[6/20] niah_single length 8192 depth 0: score 0.00 (9.1s)\n")
    got = study.parse_eval_log(log)
    assert got["samples"] == [
        {"task": "niah_single", "length": 2048, "depth": 0.5, "score": 1.0},
        {"task": "variable_tracking", "length": 2048, "depth": None, "score": 0.4},
        {"task": "niah_single", "length": 8192, "depth": 0.0, "score": 0.0}]
    assert got["perplexity"] == {"2048": pytest.approx(3.4370, abs=1e-4)}  # e ** 1.2346
