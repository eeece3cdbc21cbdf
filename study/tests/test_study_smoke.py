"""The study's chain at CPU size (`python -m study ... --scale tiny`), in this process:
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

from study import steps as study

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    mp = pytest.MonkeyPatch()
    mp.setenv("L2A_DATA_DIR", str(root / "data"))
    mp.setenv("L2A_CACHE_DIR", str(root / "models"))
    mp.setenv("WANDB_MODE", "disabled")
    args = argparse.Namespace(scale="tiny", runs=str(root / "runs"), results=str(root / "results"),
                              base_dir=str(root / "base"), max_minutes=None, data_archives=None)
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
    from train.config import from_hydra
    from train.data.prepare import compose

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
    # The base as it is copied between hosts: its shards and one tar of the small files
    # (config, tokenizer), each shard within the shard size plus its header.
    shipped = [f["file"] for f in pre["base_files"]]
    shards = sorted(f.name for f in Path(s.base_dir).glob("*.safetensors"))
    assert shards and shipped == sorted([*shards, study.BASE_BUNDLE])
    assert all(f["bytes"] < study.MAX_SHARD_BYTES + (1 << 20) for f in pre["base_files"])
    saved = json.loads((Path(s.results) / "pretrain-seed0.json").read_text())
    assert saved["scale"] == "tiny" and saved["train"]["tokens"] == 4 * 4 * 512
    # The retrieval probe ran on the base: a 4-step tiny model cannot copy a passkey, and
    # its answer costs about what a near-uniform guess over the byte vocabulary does.
    (row,) = saved["train"]["probe"]["rows"]
    assert row["task"] == "passkey" and row["length"] == 256 and row["exact"] == 0.0
    assert row["nll"] > 2.0


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
            assert "failed" not in ev, ev
            if study.tool_missing("eval"):  # not in this checkout: recorded as skipped
                assert ev["skipped"] == "python -m eval is not available in this checkout"
                continue
            assert set(ev["retrieval"]) == {"512", "1024"}
            assert all(0.0 <= v <= 1.0 for v in ev["retrieval"].values())
            assert set(ev["perplexity"]) == {"512"}  # the held-out rows are 512 tokens long
            # KV bytes per sequence from first principles: 2 (K, V) x 2 KV heads x 16 dims
            # x 2 bytes = 128 per token per slot; 2 layers; L2A local slots hold window - 1
            # = 31 tokens, global slots every token; dense: every token in every layer.
            expected = {"dense": 2 * 1024, "0.0": 2 * (31 + 1024), "0.25": 2 * (31 + 1024),
                        "0.5": 2 * 31 + 1024}[arm if arm == "dense" else frac] * 128
            assert ev["kv_bytes"]["1024"] == expected
            if arm != "dense":
                assert len(ev["layer_sparsity"]) == (1 if frac == "0.5" else 2)
            if frac != "0.0":
                # The tiny model has 2 layers: keeping 0.75 of them rounds to 2, 0.5 to 1.
                prune = ev["prune"]
                assert len(prune["kept_global_layers"]) == {"0.25": 2, "0.5": 1}[frac]
                kv = prune["kv_bytes"]
                assert kv["context"] == 8192 and kv["after"] <= kv["before"]
                assert (kv["after"] < kv["before"]) == (frac == "0.5")


def test_eval_writes_per_sample_records(chain):
    """--scale tiny: niah_single at depth 0.5, lengths 512 and 1024, 2 teacher-forced samples
    per cell, the first also generated: 4 lines per evaluation; dense unpruned, the L2A
    model unpruned and pruned by a quarter and a half."""
    from study.samples import load_records

    s, _, _ = chain
    if study.tool_missing("eval"):
        pytest.skip("python -m eval is not in this checkout")
    lines = load_records(Path(s.samples_dir))
    by_model = {}
    for x in lines:
        by_model.setdefault((x["arm"], x["pruned"]), []).append(x)
    assert sorted(by_model) == [("dense", 0.0), ("l2a_s08", 0.0), ("l2a_s08", 0.25),
                                ("l2a_s08", 0.5)]
    for (arm, pruned), xs in by_model.items():
        assert [(x["eval_length"], x["index"], x["generated"]) for x in xs] == [
            (n, i, i == 0) for n in (512, 1024) for i in (0, 1)]
        assert {(x["train_length"], x["seed"], x["base_seed"], x["eval_seed"]) for x in xs} == {
            (8192, 0, 0, 0)}
        ev = json.loads(s.run_path(arm, "8k", 0).read_text())["evals"][f"{pruned:g}" if pruned
                                                                        else "0.0"]
        for x in xs:
            # the answer " 1234567." is 9 byte tokens; log-likelihoods are <= 0
            assert x["answer_tokens"] == 9 and x["answer_loglik"] <= 0
            assert 0 <= x["token_acc"] <= 1 and (x["em"] is None) == (not x["generated"])
            if x["generated"]:  # one generated sample per length: it is the length's mean
                assert x["em"] == ev["retrieval"][str(x["eval_length"])]
        assert Path(ev["samples_file"]).name == (
            f"{arm}-8k-base0-seed0-pruned{pruned:g}.jsonl.gz")


def test_corpus_manifest_is_recorded(chain):
    s, _, _ = chain
    corpus = json.loads((Path(s.results) / "corpus.json").read_text())
    stdlib = corpus["sources"]["stdlib"]
    assert corpus["python"] == ".".join(map(str, sys.version_info[:3]))
    assert stdlib["train"]["files"] > 0 and stdlib["validation"]["files"] > 0
    assert stdlib["train"]["digest"] != stdlib["validation"]["digest"]


# Runs `python -m study.train_prepared` in a fresh interpreter where `datasets` and `pyarrow`
# cannot be imported: a GPU host that has the wheels of scripts/offline_wheels.sh only.
NO_DATASETS = ("import sys; sys.modules['datasets'] = None; sys.modules['pyarrow'] = None; "
               "sys.argv[0] = 'study.train_prepared'; from study.train_prepared import main; "
               "sys.exit(main())")


def _without_datasets(argv, log, max_seconds=None, env=None):
    if argv[1:3] == ["-m", "study.train_prepared"]:
        return study.run_step([sys.executable, "-c", NO_DATASETS, *argv[3:]], log,
                              max_seconds, env)
    return study.run_in_process(argv, log, max_seconds, env)


def test_archived_rows_train_like_the_pipeline_without_datasets(chain, tmp_path, monkeypatch):
    s, _, root = chain
    args = argparse.Namespace(scale="tiny", runs=str(tmp_path / "runs"),
                              results=str(tmp_path / "results"), base_dir=str(s.base_dir),
                              max_minutes=None, data_archives=str(tmp_path / "archives"))
    other = study.Study(args, runner=_without_datasets)
    [archive] = other.pack_data([None])
    assert archive.name == "study-512.tar.xz"
    monkeypatch.setenv("L2A_DATA_DIR", str(tmp_path / "elsewhere"))  # only the archive there
    other.extend(["l2a_s08"], ["8k"], [0])
    assert (tmp_path / "elsewhere" / "prepared" / "study_tiny-512" / "meta.json").exists()
    assert (tmp_path / "elsewhere" / "prepared" / "heldout-512" / "meta.json").exists()

    def losses(run_dir):
        rows = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
        return [(json.loads(r)["step"], json.loads(r)["loss"]) for r in rows if r.strip()]

    ref = losses(root / "runs" / "l2a_s08-8k-seed0")
    assert len(ref) == 3 and losses(tmp_path / "runs" / "l2a_s08-8k-seed0") == ref


def test_report_over_the_smoke_results(chain, tmp_path):
    from study.report import write_report

    s, _, _ = chain
    page = write_report(Path(s.results), tmp_path / "RESULTS.md").read_text()
    assert "--scale tiny" in page and "not the study" in page
    assert "| L2A target 0.8 | 8192 | 1 |" in page
    # the answer: the L2A model against dense on the 2 generated samples (one per length:
    # the tiny runs train on 512 tokens), and beyond, at 1024
    assert page.index("## The answer") < page.index("## Recipe")
    row = next(x for x in page.splitlines() if x.startswith("| L2A target 0.8 | 8192 | "))
    assert "| 1 (1 seed unit × 1) |" in row
    assert any(x.startswith("| L2A target 0.8 | 8192 | 1024 |") for x in page.splitlines())


def test_cli_errors_are_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "study", "extend", "--arms", "sparse",
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
