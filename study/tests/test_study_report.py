"""The study's report writer on made-up result files: means and spreads over seeds, the
headline check against the bar, skipped steps, plots, and the page with no results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study.report import headline, load, summarize, write_report
from study.steps import parse_eval


def _train(sparsity, loss=1.5, gpu=100.0, layers=None):
    return {"run_dir": "r", "completed": True, "wall_s": 1.0, "steps": 150, "tokens": 19660800,
            "gpu_time_s": gpu, "final_lm_loss": loss, "sparsity": sparsity,
            "layer_sparsity": layers or [], "export_dir": "e"}


def _eval(scores: dict, sparsity_layers=None, kv=None, ppl=None):
    return {"retrieval": {str(k): v for k, v in scores.items()},
            "perplexity": {str(k): v for k, v in (ppl or {}).items()},
            "layer_sparsity": sparsity_layers, "kv_bytes": {str(k): v for k, v in (kv or {}).items()}}


def _write(d: Path, name: str, obj) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(json.dumps(obj))


@pytest.fixture
def results(tmp_path):
    d = tmp_path / "results"
    _write(d, "pretrain-seed0.json", {"step": "pretrain", "seed": 0, "scale": "full",
                                       "train": _train(0.0, loss=1.1, gpu=180.0)})
    # dense: seeds score 0.8 and 0.9 at 16K -> 0.85 +- 0.05
    for seed, score in ((0, 0.8), (1, 0.9)):
        _write(d, f"run-dense-16k-seed{seed}.json", {
            "arm": "dense", "train_length": 16384, "seed": seed, "train": _train(0.0, gpu=120.0),
            "evals": {"0.0": _eval({16384: score, 32768: score / 2}, kv={16384: 2**20 * 8},
                                   ppl={16384: 3.0 + seed})}})
    # target 0.8: 0.83 and 0.85 -> 0.84 = 98.8% of dense, held-out sparsity 0.8 / 0.84: meets.
    for seed, score, layers in ((0, 0.83, [0.7, 0.9]), (1, 0.85, [0.76, 0.92])):
        _write(d, f"run-l2a_s08-16k-seed{seed}.json", {
            "arm": "l2a_s08", "train_length": 16384, "seed": seed,
            "train": _train(0.8, layers=[0.7, 0.9]),
            "evals": {"0.0": _eval({16384: score}, layers),
                      "0.5": {**_eval({16384: score - 0.2}, layers, kv={16384: 2**20 * 5}),
                              "prune": {"kept_global_layers": [1], "pruned_layers": [0],
                                        "kv_bytes": {"context": 16384, "before": 2**20 * 8,
                                                     "after": 2**20 * (5 + seed)}}}}})
    # target 0.9: 0.8 -> 94.1% of dense: misses.
    _write(d, "run-l2a_s09-16k-seed0.json", {
        "arm": "l2a_s09", "train_length": 16384, "seed": 0, "train": _train(0.9),
        "evals": {"0.0": _eval({16384: 0.8}, [0.9, 0.9]),
                  "0.25": {"skipped": "python -m train.prune is not available in this checkout"}}})
    # paper recipe: high retrieval but sparsity 0.5 only -> misses on sparsity.
    _write(d, "run-l2a-16k-seed0.json", {
        "arm": "l2a", "train_length": 16384, "seed": 0, "train": _train(0.5),
        "evals": {"0.0": _eval({16384: 0.9}, [0.5, 0.5])}})
    return d


def test_means_spreads_and_headline(results):
    rows = summarize(load(results)[1])
    dense = rows[("dense", 16384, 0.0)]
    mean, half, n = dense["by_length"][16384]["retrieval"]
    assert (round(mean, 6), round(half, 6), n) == (0.85, 0.05, 2)
    assert dense["by_length"][32768]["retrieval"][0] == pytest.approx(0.425)
    assert dense["by_length"][16384]["perplexity"][0] == pytest.approx(3.5)
    s08 = rows[("l2a_s08", 16384, 0.0)]
    assert s08["heldout_sparsity"][0] == pytest.approx((0.8 + 0.84) / 2)
    assert s08["heldout_layer_sparsity"] == pytest.approx([0.73, 0.91])
    assert rows[("l2a_s08", 16384, 0.5)]["by_length"][16384]["retrieval"][0] == pytest.approx(0.64)
    lines = {line.split(" at ")[0][2:]: line for line in headline(rows)}
    assert "98.8% of dense" in lines["L2A target 0.8"] and "meets the bar" in lines["L2A target 0.8"]
    assert "94.1% of dense" in lines["L2A target 0.9"] and "misses the bar on the means." in lines["L2A target 0.9"]
    assert "misses the bar on the means (sparsity 0.50 < 0.8)" in lines["L2A paper"]


def test_page_tables_and_plots(results, tmp_path):
    page = write_report(results, tmp_path / "docs" / "RESULTS.md").read_text()
    assert "Not run yet" not in page and "not the study" not in page
    assert "| dense | 16384 | 0 | 16384 | 0.850 ± 0.050 (n=2) | 3.50 ± 0.50 (n=2) | - | 8.0 |" in page
    assert "| L2A target 0.9 | 16384 | 0.25 | - | not evaluated: python -m train.prune" in page
    assert "| 0 | full | 150 | 19,660,800 | 1.1000 | 180.0 | True |" in page
    # KV after pruning: 5 and 6 MiB over the two seeds -> 5.5 of 8 MiB.
    assert "| L2A target 0.8 | 16384 | 0.5 | 1 | 8.0 | 5.5 | 0.688 | 16384 |" in page
    for png in ("retrieval_by_length", "sparsity_per_layer", "retrieval_vs_pruned"):
        assert (results / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"](../results/{png}.png)" in page  # relative to the page


def test_page_without_results_says_not_run(tmp_path):
    page = write_report(tmp_path / "none", tmp_path / "RESULTS.md").read_text()
    assert "**Not run yet.**" in page and "## Headline" not in page
    assert not list(tmp_path.glob("*.png"))


def test_parse_eval_averages_tasks_per_length(tmp_path):
    # The shape of python -m eval's results.json (docs/EVAL.md): per-depth cells and the
    # "all" cell of a NIAH task; variable tracking has depth null.
    (tmp_path / "results.json").write_text(json.dumps({
        "tasks": [
            {"task": "niah_single", "length": 4096, "depth": 0.0, "score": 0.0, "samples": 1},
            {"task": "niah_single", "length": 4096, "depth": 1.0, "score": 1.0, "samples": 1},
            {"task": "niah_single", "length": 4096, "depth": "all", "score": 0.5, "samples": 2},
            {"task": "variable_tracking", "length": 4096, "depth": None, "score": 1.0,
             "samples": 1},
            {"task": "niah_single", "length": 8192, "depth": "all", "score": 0.0, "samples": 2},
        ],
        "perplexity": [{"length": 4096, "loss": 0.9163, "ppl": 2.5}],
        "routing": {"layers": [0, 1], "heldout": [
            {"length": 8192, "layer_sparsity": [0.2, 0.8]},
            {"length": 4096, "layer_sparsity": [0.1, 0.9]}]},
    }))
    assert parse_eval(tmp_path) == {"retrieval": {"4096": 0.75, "8192": 0.0},
                                    "perplexity": {"4096": 2.5}, "layer_sparsity": [0.2, 0.8],
                                    "kv_bytes": {}}


def test_one_section_per_study_run_with_its_notes_and_stopped_evaluations(tmp_path):
    """A subfolder per study run: its about.json's title, commands and notes, a row per seed, what a
    stopped evaluation had scored, and, where the dense arm scores 0, no ratio: the bar is
    said to be untested."""
    d = tmp_path / "results" / "h200-first"
    _write(d, "about.json", {"title": "First run", "notes": ["old data mix"],
                             "commands": ["scripts/study_gpu.sh arms --out out"]})
    _write(d, "run-dense-16k-seed0.json", {
        "arm": "dense", "train_length": 16384, "seed": 0, "train": _train(0.0, gpu=150.0),
        "evals": {"0.0": _eval({2048: 0.0, 16384: 0.0})}})
    _write(d, "run-l2a-16k-seed1.json", {
        "arm": "l2a", "train_length": 16384, "seed": 1, "train": _train(0.86, loss=0.62),
        "evals": {"0.0": {"failed": "exit -9: [42/52] ...", "partial": {
            "samples": [{"task": "niah_single", "length": 2048, "depth": 0.5, "score": 0.0},
                        {"task": "niah_single", "length": 8192, "depth": 0.5, "score": 1.0}],
            "perplexity": {"2048": 3.44}}}}})
    page = write_report(tmp_path / "results", tmp_path / "docs" / "RESULTS.md").read_text()
    assert "## First run" in page and "- old data mix" in page
    assert "Commands:\n\n```bash\nscripts/study_gpu.sh arms --out out\n```" in page
    assert "| L2A paper | 16384 | 1 | 150 | 19,660,800 | 0.860 | 0.6200 | 100.0 | - | True |" in page
    assert "| L2A paper | 16384 | 1 | 0 | 2 (2048, 8192) | 0.50 | 2048: 3.44 | exit -9 |" in page
    assert "the dense arm scores 0 at 16384; no ratio" in page
    assert "**The bar was not tested:**" in page
    assert (d / "retrieval_by_length.png").exists()  # the plots beside their records


def test_no_verdict_against_a_dense_arm_that_has_not_learned_the_tasks(results):
    """A dense arm right on 4% of the samples (partial credit) is no yardstick: 0 against
    0.04 is "not testable", not "misses the bar"; 0.5 is the floor where a ratio is read."""
    for seed in (0, 1):
        f = results / f"run-dense-16k-seed{seed}.json"
        run = json.loads(f.read_text())
        run["evals"]["0.0"]["retrieval"]["16384"] = 0.04
        f.write_text(json.dumps(run))
    lines = headline(summarize(load(results)[1]))
    assert lines and all("not testable" in x and "0.040" in x for x in lines), lines
    assert not any("of dense" in x for x in lines)


def _buckets(length: int, ppls: list[float]) -> list[dict]:
    width = length // len(ppls)
    return [{"length": length, "bucket": i, "start": i * width, "end": (i + 1) * width,
             "tokens": width, "loss": None, "ppl": v} for i, v in enumerate(ppls)]


def test_perplexity_by_position_is_the_mean_over_seeds_at_the_trained_length(results, tmp_path):
    """Two seeds of the dense 16K arm with per-bucket perplexities chosen by hand, at 8K and
    at 16K: the table holds, per bucket at 16K, the mean of the two seeds' values."""
    at_16k = {0: [4.0, 3.0, 2.0, 2.0, 2.0, 2.0, 1.0, 1.5],
              1: [5.0, 3.5, 2.5, 1.0, 2.0, 3.0, 2.0, 2.0]}
    for seed, ppls in at_16k.items():
        _write(results / "logs", f"eval-results-dense-16k-seed{seed}.json", {
            "perplexity": [{"length": 16384, "rows": 8}],
            "perplexity_by_position": _buckets(8192, [9.0 + seed] * 8) + _buckets(16384, ppls)})
    page = write_report(results, tmp_path / "docs" / "RESULTS.md").read_text()
    assert "### Perplexity by position" in page and "Evaluated at 16384 tokens (8 held-out rows per seed):" in page
    assert ("| arm | trained at | n | 0-2K | 2K-4K | 4K-6K | 6K-8K | 8K-10K | 10K-12K | "
            "12K-14K | 14K-16K |") in page
    # (4+5)/2, (3+3.5)/2, (2+2.5)/2, (2+1)/2, (2+2)/2, (2+3)/2, (1+2)/2, (1.5+2)/2
    assert ("| dense | 16384 | 2 | 4.500 | 3.250 | 2.250 | 1.500 | 2.000 | 2.500 | 1.500 | "
            "1.750 |") in page
    assert "Evaluated at 8192" not in page  # the 8K buckets of a 16K run are not shown
    assert (results / "ppl_by_position.png").read_bytes()[:4] == b"\x89PNG"
    assert "](../results/ppl_by_position.png)" in page


def test_no_perplexity_by_position_without_eval_results(results, tmp_path):
    page = write_report(results, tmp_path / "docs" / "RESULTS.md").read_text()
    assert "Perplexity by position" not in page and "ppl_by_position" not in page
    assert not (results / "ppl_by_position.png").exists()
