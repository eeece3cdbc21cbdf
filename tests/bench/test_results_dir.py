"""Where the benchmarks write without --out: $L2A_RESULTS_DIR where set, else bench/results/
of the checkout; an OUT in the environment (anyone's variable) is not read."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from bench import eval_suite, train_throughput
from bench.results_dir import results_dir

CHECKOUT_RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def test_the_checkout_folder_unless_the_variable_names_one(monkeypatch, tmp_path):
    monkeypatch.delenv("L2A_RESULTS_DIR", raising=False)
    monkeypatch.setenv("OUT", str(tmp_path / "someone-elses"))
    assert results_dir() == CHECKOUT_RESULTS
    monkeypatch.setenv("L2A_RESULTS_DIR", str(tmp_path / "job"))
    assert results_dir() == tmp_path / "job"
    monkeypatch.setenv("L2A_RESULTS_DIR", "")  # set but empty: as if unset
    assert results_dir() == CHECKOUT_RESULTS


def test_entry_points_write_there_and_out_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("L2A_RESULTS_DIR", str(tmp_path / "job"))
    assert train_throughput._out_path(SimpleNamespace(out=None)) == tmp_path / "job" / "train_throughput.json"
    assert eval_suite._out_path(SimpleNamespace(out=None)) == tmp_path / "job" / "eval_suite.json"
    given = str(tmp_path / "mine.json")
    assert train_throughput._out_path(SimpleNamespace(out=given)) == Path(given)
