"""The study's chain at CPU size (`python -m bench.study ... --scale tiny`), in this process:
prepare -> pretrain (dense, every parameter) -> extend (dense and L2A arms) -> eval ->
prune -> eval. Evaluation and pruning are recorded as skipped until their tools exist;
when they land, the skip assertions below turn into checks of their numbers."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import study

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    mp = pytest.MonkeyPatch()
    mp.setenv("L2A_DATA_DIR", str(root / "data"))
    mp.setenv("L2A_CACHE_DIR", str(root / "models"))
    mp.setenv("WANDB_MODE", "disabled")
    args = argparse.Namespace(scale="tiny", runs=str(root / "runs"), results=str(root / "results"),
                              base_dir=str(root / "base"), max_minutes=None)
    s = study.Study(args, runner=study.run_in_process)
    s.prepare([None])
    pre = s.pretrain(seed=0)
    s.extend(["dense", "l2a_s08"], ["8k"], [0])
    s.evaluate()
    s.prune()
    yield s, pre, root
    mp.undo()


def test_pretraining_trains_every_parameter_and_ships_small_shards(chain):
    from transformers import AutoModelForCausalLM

    from train.build_model import _base_dir_for_random
    from train.data.prepare import compose
    from train.config import from_hydra

    s, pre, root = chain
    assert pre["completed"] and pre["steps"] == 4
    cfg = from_hydra(compose("config", ["experiment=study_base", *study.TINY["pretrain"]]))
    before = AutoModelForCausalLM.from_pretrained(_base_dir_for_random(cfg)).state_dict()
    after = AutoModelForCausalLM.from_pretrained(s.base_dir).state_dict()
    assert before.keys() == after.keys()
    frozen_under_l2a = [n for n in before if "mlp" in n or "embed_tokens" in n]
    assert frozen_under_l2a, "the tiny base has MLP and embedding weights"
    for name in before:  # train.trainable=all: every tensor moved, MLP and embeddings too
        assert not torch.equal(before[name], after[name]), f"{name} did not train"
    files = sorted(Path(s.base_dir).glob("*.safetensors"))
    assert [f["file"] for f in pre["base_files"]] == [f.name for f in files]
    assert 1 <= len(files) <= 8 and all(f.stat().st_size < 16 << 20 for f in files)
    saved = json.loads((Path(s.results) / "pretrain-seed0.json").read_text())
    assert saved["scale"] == "tiny" and saved["train"]["tokens"] == 4 * 4 * 512


def test_extension_arms_start_from_the_base(chain):
    s, _, _ = chain
    dense = json.loads(s.run_path("dense", "8k", 0).read_text())
    l2a = json.loads(s.run_path("l2a_s08", "8k", 0).read_text())
    for rec in (dense, l2a):
        assert rec["train"]["completed"] and rec["train"]["steps"] == 3
        assert rec["train"]["final_lm_loss"] is not None
    assert dense["train"]["sparsity"] == 0.0 and dense["train"]["layer_sparsity"] == []
    assert len(l2a["train"]["layer_sparsity"]) == 2  # the tiny base's two layers
    # Both loaded the pretrained base (its loss, not a random model's ~ln(320) = 5.77):
    # the base's first-step loss bounds theirs from above loosely.
    from transformers import AutoModelForCausalLM

    import l2a as _  # noqa: F401

    model = AutoModelForCausalLM.from_pretrained(dense["train"]["export_dir"])
    assert model.config.rope_parameters["rope_theta"] == 500000.0
    base = AutoModelForCausalLM.from_pretrained(s.base_dir).state_dict()
    mlp = next(n for n in base if "mlp.down_proj" in n)
    assert torch.equal(model.state_dict()[mlp], base[mlp])  # frozen in extension, from the base


def test_eval_and_prune_steps_are_recorded(chain):
    s, _, _ = chain
    for arm in ("dense", "l2a_s08"):
        evals = json.loads(s.run_path(arm, "8k", 0).read_text())["evals"]
        expected = {"0.0"} if arm == "dense" else {"0.0", "0.25", "0.5"}
        assert set(evals) == expected
        for frac, ev in evals.items():
            if study.tool_missing("eval") and (frac == "0.0" or study.tool_missing("l2a.prune")):
                assert ev["skipped"].startswith("python -m ")  # tool not landed yet
            else:  # the tools exist: real numbers
                assert "failed" not in ev, ev
                assert ev.get("retrieval"), ev


def test_report_over_the_smoke_results(chain, tmp_path):
    from bench.study_report import write_report

    s, _, _ = chain
    page = write_report(Path(s.results), tmp_path / "RESULTS.md").read_text()
    assert "--scale tiny" in page and "not the study" in page
    assert "| L2A target 0.8 | 8192 | 1 |" in page


def test_cli_errors_are_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench.study", "extend", "--arms", "sparse",
                          "--base-dir", str(tmp_path / "nothing")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == ["error: sparse: unknown (known: dense, l2a, l2a_s08, l2a_s09)"]


def test_run_step_stops_a_long_run_with_sigterm(tmp_path):
    code = ("import signal,sys,time\n"
            "signal.signal(signal.SIGTERM, lambda *a: (print('checkpointed'), sys.exit(75)))\n"
            "time.sleep(60)\n")
    rc, wall = study.run_step([sys.executable, "-c", code], tmp_path / "log", max_seconds=3)
    assert rc == 75 and wall < 30
    assert "checkpointed" in (tmp_path / "log").read_text()
