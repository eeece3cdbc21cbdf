"""The answer at the top of study/RESULTS.md, on made-up per-sample records whose intervals
are known without the bootstrap: an arm equal to dense on every paired sample (ratio 1
in every replicate), one at exactly half (0.5), one whose sparsity is below the bar, a
dense arm that has not learned the tasks, records that do not pair, pruned models with
and without their own records, and the newest study run chosen for the answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study.report import write_report
from study.samples import file_name, sample_id, write_records

TASKS = ["niah_single", "variable_tracking"]
# dense's score per (seed, task, index), at 16K and (collapsed) at 32K
DENSE = {(s, t, i): [1.0, 0.5, 0.75, 0.25][(s + i + len(t)) % 4] for s in (0, 1)
         for t in TASKS for i in range(3)}


def _lines(arm, seed, length, score, pruned=0.0, tf=None):
    out = []
    for t in TASKS:
        for i in range(3):
            v = score(seed, t, i)
            out.append({"arm": arm, "train_length": 16384, "eval_length": length, "base_seed": 0,
                        "seed": seed, "pruned": pruned, "eval_seed": seed, "task": t,
                        "depth": 0.5 if t.startswith("niah") else None, "index": i,
                        "sample_id": sample_id(t, length, 0.5 if t.startswith("niah") else None, i),
                        "generated": True, "em": v, "answer_loglik": None if tf is None else -tf,
                        "answer_tokens": None if tf is None else 2,
                        "token_acc": None if tf is None else v, "source": "test"})
    return out


def _run(d: Path, arm: str, seed: int, sparsity: float, evals_extra=None):
    ev = {"retrieval": {"16384": 0.5, "32768": 0.1}, "perplexity": {"16384": 2.0 + seed},
          "layer_sparsity": [sparsity, sparsity], "kv_bytes": {"16384": 2**20 * 8}}
    rec = {"arm": arm, "train_length": 16384, "seed": seed, "scale": "full",
           "train": {"run_dir": "r", "completed": True, "wall_s": 1.0, "steps": 10, "tokens": 100,
                     "gpu_time_s": 1.0, "final_lm_loss": 1.0, "sparsity": sparsity,
                     "layer_sparsity": [], "export_dir": "e"},
           "evals": {"0.0": ev, **(evals_extra or {})}}
    d.mkdir(parents=True, exist_ok=True)
    (d / f"run-{arm}-16k-seed{seed}.json").write_text(json.dumps(rec))


def _prune(frac: str, after_mib: int, score: float):
    return {frac: {"retrieval": {"16384": score}, "perplexity": {}, "layer_sparsity": [0.9],
                   "kv_bytes": {}, "prune": {"kept_global_layers": [1], "pruned_layers": [0],
                                             "kv_bytes": {"context": 16384, "before": 2**20 * 8,
                                                          "after": 2**20 * after_mib}}}}


@pytest.fixture
def study_run(tmp_path):
    results, samples = tmp_path / "results", tmp_path / "samples"
    d, lines = results / "b-newest", samples / "b-newest"
    (results / "a-older").mkdir(parents=True)
    _run(results / "a-older", "dense", 0, 0.0)
    (results / "a-older" / "about.json").write_text(json.dumps({"title": "Older run"}))
    d.mkdir(parents=True)
    (d / "about.json").write_text(json.dumps({"title": "Newest run", "notes": ["n"]}))
    arms = {"dense": (0.0, lambda s, t, i: DENSE[s, t, i]),
            "l2a_s08": (0.85, lambda s, t, i: DENSE[s, t, i]),  # = dense on every sample
            "l2a_s09": (0.9, lambda s, t, i: DENSE[s, t, i] / 2),  # half of dense
            "l2a": (0.5, lambda s, t, i: DENSE[s, t, i])}  # = dense, but sparsity 0.5
    for arm, (sparsity, score) in arms.items():
        for seed in (0, 1):
            extra = (_prune("0.5", 4 + seed, 0.5) if arm == "l2a_s08" else
                     _prune("0.5", 4, 0.25) if arm == "l2a_s09" else None)
            _run(d, arm, seed, sparsity, extra)
            recs = _lines(arm, seed, 16384, score, tf=1.0)
            # beyond the trained length: dense collapses to 0, L2A keeps its scores
            recs += _lines(arm, seed, 32768, (lambda s, t, i: 0.0) if arm == "dense" else score)
            if arm == "l2a_s08":  # its pruned model, recorded per sample: = unpruned
                recs += _lines(arm, seed, 16384, score, pruned=0.5)
            write_records(lines / file_name(arm, 16384, 0, seed, 0.0), recs)
    return results, samples


def _row(page: str, start: str) -> str:
    return next(line for line in page.splitlines() if line.startswith(start))


def test_the_page_opens_with_the_newest_runs_answer(study_run, tmp_path):
    results, samples = study_run
    page = write_report(results, tmp_path / "docs" / "RESULTS.md", samples).read_text()
    assert page.index("## The answer") < page.index("## Recipe") < page.index("## History")
    assert "From the newest study run: **Newest run**" in page
    assert page.index("### Older run") < page.index("### Newest run")  # history, oldest first
    # identical on every paired sample: ratio 1 in every replicate; sparsity 0.85 >= 0.8
    row = _row(page, "| L2A target 0.8 | 16384 |")
    assert "| 1.000 [1.00, 1.00] |" in row and row.endswith("| **met** |")
    assert "| 12 (2 seed units × 6) |" in row  # 2 tasks x 3 samples per seed
    assert "| 0.850 [" in row  # held-out sparsity, t interval over 2 seeds: equal, so width 0
    # half of dense on every sample: 0.5 in every replicate
    assert "| 0.500 [0.50, 0.50] |" in _row(page, "| L2A target 0.9 | 16384 |")
    assert _row(page, "| L2A target 0.9 | 16384 |").endswith("| **missed** |")
    assert _row(page, "| L2A paper | 16384 |").endswith("| missed: sparsity 0.50 < 0.8 |")
    # perplexity 2 and 3 over the seeds: 2.5 +- t(1) x sd / sqrt 2 = 2.5 +- 12.706 x 0.5
    dense = _row(page, "| dense | 16384 |")
    assert "| 2.500 [-3.853, 8.853] (n=2) |" in dense and "| 8.0 MiB |" in dense
    # KV after pruning half: 4 and 5 MiB of 8 -> 0.5625 of 8 MiB
    assert "| 4.5 MiB (0.56 of 8.0) |" in _row(page, "| L2A target 0.8 | 16384 |")
    png = results / "b-newest" / "answer.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and "](../results/b-newest/answer.png)" in page


def test_beyond_the_trained_length_pruning_and_teacher_forced_rows(study_run, tmp_path):
    results, samples = study_run
    page = write_report(results, tmp_path / "RESULTS.md", samples).read_text()
    # dense 0 on every 32K sample: every replicate's ratio is +inf (the arm's mean > 0)
    row = _row(page, "| L2A target 0.8 | 16384 | 32768 |")
    assert "| ∞ [∞, ∞] |" in row and row.endswith("| **met** |")
    # the pruned model's own records equal its unpruned ones: ratio 1, interval [1, 1]
    row = _row(page, "| L2A target 0.8 | 16384 | 0.5 |")
    assert "| 1.000 [1.00, 1.00] |" in row and row.endswith("| **met** |")
    # no per-sample records of its pruned model: the run records' means, no interval
    row = _row(page, "| L2A target 0.9 | 16384 | 0.5 |")
    assert "(no interval)" in row and "undecided: no per-sample records" in row
    assert "0.500 (no interval)" in row  # 0.25 / 0.5 in the run records
    # teacher-forced: token accuracy = the score, so 0.5 of dense for target 0.9; the same
    # log-likelihood for every arm: difference 0
    row = _row(page, "| L2A target 0.9 | 16384 | 0.500 [0.50, 0.50]")
    assert "+0.000 [0.000, 0.000]" in row


def test_not_testable_and_unpaired(study_run, tmp_path):
    results, samples = study_run
    lines = samples / "b-newest"
    for seed in (0, 1):  # dense right on 1 sample in 8: not a yardstick
        write_records(lines / file_name("dense", 16384, 0, seed, 0.0),
                      _lines("dense", seed, 16384, lambda s, t, i: 0.25 if i == 0 else 0.0))
        # the target-0.9 arm's records name other prompts (eval seed 7): nothing pairs
        write_records(lines / file_name("l2a_s09", 16384, 0, seed, 0.0),
                      [{**r, "sample_id": r["sample_id"] + "/seed7"}
                       for r in _lines("l2a_s09", seed, 16384, lambda s, t, i: 1.0)])
    page = write_report(results, tmp_path / "RESULTS.md", samples).read_text()
    assert "| not testable: dense scores 0.083 < 0.5 |" in _row(page, "| L2A target 0.8 | 16384 |")
    assert "no paired per-sample records" in _row(page, "| L2A target 0.9 | 16384 |")


def test_undecided_says_what_would_decide(study_run, tmp_path):
    results, samples = study_run
    lines = samples / "b-newest"
    for seed in (0, 1):  # right where dense is, but on 2 samples of 6 per seed wrong
        write_records(lines / file_name("l2a_s08", 16384, 0, seed, 0.0), _lines(
            "l2a_s08", seed, 16384, lambda s, t, i: 0.0 if (i == 0 and t == TASKS[s]) else DENSE[s, t, i]))
    page = write_report(results, tmp_path / "RESULTS.md", samples).read_text()
    row = _row(page, "| L2A target 0.8 | 16384 |")
    assert "**undecided**" in row and "generated samples per model and length at 6 seed units" in row


def test_no_per_sample_records_no_intervals(tmp_path):
    results = tmp_path / "results"
    _run(results / "x", "dense", 0, 0.0)
    page = write_report(results, tmp_path / "RESULTS.md", tmp_path / "none").read_text()
    assert "has no per-sample records, so no intervals" in page


def test_records_in_each_runs_own_samples_folder(study_run, tmp_path):
    """Without a records root the report reads each run's records from <run>/samples/: the
    same page as with the records under a root given explicitly, but for where it says
    they are."""
    results, samples = study_run
    given = write_report(results, tmp_path / "given.md", samples).read_text()
    (samples / "b-newest").rename(results / "b-newest" / "samples")
    page = write_report(results, tmp_path / "own.md").read_text()
    assert "| 1.000 [1.00, 1.00] |" in _row(page, "| L2A target 0.8 | 16384 |")
    assert "per-sample lines `results/b-newest/samples/`" in page
    assert page == given.replace("per-sample lines `samples/b-newest/`",
                                 "per-sample lines `results/b-newest/samples/`")
