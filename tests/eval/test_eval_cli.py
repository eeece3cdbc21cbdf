"""`python -m eval` end to end on a tiny saved L2A model, and its bad-input contract:
one-line error, exit 2, no results.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from eval_helpers import tiny_l2a

from eval.__main__ import run
from eval.errors import EvalError
from l2a.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
# 1024: variable tracking's one-shot example alone takes about 500 tokens.
SMALL = {"tasks": ["niah_single", "variable_tracking"], "lengths": [1024], "depths": [0.0, 1.0],
         "samples": 1, "max_new_tokens": 4,
         "perplexity": {"data": "generated", "rows": 1, "buckets": 4, "lengths": [256]}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok):
    from l2a.convert import save_atomically

    return save_atomically(tiny_l2a(), tok, tmp_path_factory.mktemp("m") / "l2a")


def test_run_writes_results_table_and_plots(model_dir, tmp_path, capsys):
    run({"model": {"path": str(model_dir)}, "eval": SMALL}, tmp_path, log=lambda s: None)
    res = json.loads((tmp_path / "results.json").read_text())
    cells = {(c["task"], c["depth"]) for c in res["tasks"]}
    assert cells == {("niah_single", 0.0), ("niah_single", 1.0), ("niah_single", "all"),
                     ("variable_tracking", None)}
    for c in res["tasks"]:
        assert c["length"] == 1024 and c["samples"] >= 1 and 0.0 <= c["score"] <= 1.0
    assert [p["length"] for p in res["perplexity"]] == [256] and res["perplexity"][0]["tokens"] == 255
    assert len(res["perplexity_by_position"]) == 4
    assert len(res["routing"]["heldout"][0]["layer_sparsity"]) == 2
    assert res["routing"]["dead_layers"] == []
    for png in ("niah_heatmap.png", "perplexity_by_position.png", "sparsity_per_layer.png"):
        assert (tmp_path / png).stat().st_size > 1000
    out = capsys.readouterr().out
    assert "niah_single" in out and "perplexity" in out


@pytest.mark.parametrize("change, message", [
    ({"eval": {**SMALL, "tasks": ["niah_foo"]}}, ["eval.tasks.0: unknown task"]),
    ({"eval": {**SMALL, "lengths": [8192]}}, ["eval.lengths.0: 8192 is above the model's context"]),
    ({"eval": {**SMALL, "perplexity": {"lengths": [9000]}}}, ["eval.perplexity.lengths.0: 9000 is above"]),
    ({"eval": {**SMALL, "lengths": [100]}},
     ["eval.lengths: niah_single at length 100: needs at least",
      "(use longer eval.lengths, or leave niah_single out of eval.tasks)"]),
    ({"eval": {**SMALL, "haystack": "EMPTY"}}, ["eval.haystack: ", "holds no text"]),
    ({"eval": {**SMALL, "haystack": "SHORT"}}, ["eval.haystack: ", "has 10 tokens, the longest length needs 1024"]),
    ({"model": {"path": "NOTMODEL"}}, ["model.path: ", "is not a model"]),
    ({"model": {"path": "BADCKPT"}}, ["model.path: ", "incomplete checkpoint"]),
    ({"model": {"random": "nope"}}, ["model.random: no conf/model/nope.yaml"]),
])
def test_bad_input_fails_before_writing(model_dir, tmp_path, change, message):
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "short.txt").write_text("Too short.\n")
    (tmp_path / "notmodel").mkdir()
    (tmp_path / "notmodel" / "config.json").write_text("{not json")
    (tmp_path / "ckpt" / "checkpoints").mkdir(parents=True)
    (tmp_path / "ckpt" / "checkpoints" / "step_00000001").mkdir()
    subs = {"EMPTY": tmp_path / "empty.txt", "SHORT": tmp_path / "short.txt",
            "NOTMODEL": tmp_path / "notmodel", "BADCKPT": tmp_path / "ckpt" / "checkpoints" / "step_00000001"}
    raw = {"model": {"path": str(model_dir)}, "eval": SMALL, **change}
    raw = json.loads(json.dumps(raw).replace('"EMPTY"', json.dumps(str(subs["EMPTY"]))).replace(
        '"SHORT"', json.dumps(str(subs["SHORT"]))).replace('"NOTMODEL"', json.dumps(str(subs["NOTMODEL"]))).replace(
        '"BADCKPT"', json.dumps(str(subs["BADCKPT"]))))
    out = tmp_path / "run"
    with pytest.raises((EvalError, ConfigError)) as err:  # a bad setting, or a bad model/data
        run(raw, out, log=lambda s: None)
    text = str(err.value)
    assert text.startswith(message[0]) and message[-1] in text and "\n" not in text, text
    assert not (out / "results.json").exists()


def test_cli_exit_code_and_no_run_dir(model_dir, tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "eval", f"model.path={model_dir}", "eval.lengths=[4096]",
                        f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: eval.lengths.0: 4096 is above the model's context"), last
    assert not run_dir.exists()


def _own_base(path: Path, context: int) -> Path:
    """A user's own small dense Qwen3 base: its own BPE tokenizer (not the byte one the tiny
    suite was written for) and its own context."""
    sys.path.insert(0, str(ROOT / "tests" / "data"))
    from tests_data_helpers import tiny_bpe_tokenizer
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = tiny_bpe_tokenizer()
    config = Qwen3Config(vocab_size=len(tok), hidden_size=64, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, max_position_embeddings=context,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    Qwen3ForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_the_tiny_suite_on_a_users_own_small_base(tmp_path, monkeypatch, capsys):
    """docs/EVAL.md's tiny evaluation (`make eval` = `python -m eval eval=tiny`) on a base
    of one's own: it runs; with a context below the suite's lengths, one line names the key."""
    import eval.__main__ as entry

    def main(argv):
        monkeypatch.setattr(sys, "argv", ["eval", "eval=tiny", *argv])
        try:
            entry.main()
        except SystemExit as e:
            return e.code
        return 0

    base = _own_base(tmp_path / "base", context=4096)
    assert main([f"model.path={base}", f"hydra.run.dir={tmp_path / 'ok'}"]) == 0
    results = json.loads((tmp_path / "ok" / "results.json").read_text())
    suite = yaml.safe_load((ROOT / "conf" / "eval" / "tiny.yaml").read_text())
    assert results["model"]["class"] == "Qwen3ForCausalLM"
    # Every task of the suite at every length, in tokens of the base's own tokenizer.
    assert {(t["task"], t["length"]) for t in results["tasks"]} == {
        (t, n) for t in suite["tasks"] for n in suite["lengths"]}
    capsys.readouterr()
    short = _own_base(tmp_path / "short", context=512)
    assert main([f"model.path={short}", f"hydra.run.dir={tmp_path / 'no'}"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert err == ["error: eval.lengths.0: 1024 is above the model's context "
                   "(max_position_embeddings 512)"], err
    assert not (tmp_path / "no").exists()
    # Its context as the length: a task that cannot fit says which keys change that.
    assert main([f"model.path={short}", "eval.lengths=[512]",
                 f"hydra.run.dir={tmp_path / 'no'}"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert len(err) == 1 and err[0].startswith(
        "error: eval.lengths: variable_tracking at length 512: needs at least "), err
    assert err[0].endswith("(use longer eval.lengths, or leave variable_tracking out of "
                           "eval.tasks)"), err
    assert main([f"model.path={short}", "eval.lengths=[512]",
                 "eval.tasks=[niah_single,niah_multikey,frequent_words]",
                 f"hydra.run.dir={tmp_path / 'fits'}"]) == 0
    assert (tmp_path / "fits" / "results.json").is_file()
