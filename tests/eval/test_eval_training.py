"""`train.eval_every`: eval scalars in metrics.jsonl during a tiny run; its checkpoint then
evaluated by `python -m eval`'s loader; bad `train.eval` fails at config time."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "train_helpers", Path(__file__).resolve().parent.parent / "train" / "train_helpers.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

FAST = ["experiment=tiny", "train.max_steps=2", "train.ckpt_every=0", "train.progress_bar=false",
        "train.wandb.mode=disabled", "train.plot=false", "train.export=false",
        "train.micro_batch_size=1", "data.synthetic.num_samples=64",
        "data.sources.0.generated.num_docs=200", "data.validation_sequences=4"]


@pytest.mark.slow
def test_eval_metrics_logged_and_checkpoint_evaluated(tmp_path):
    overrides = FAST + [f"model.cache_dir={tmp_path / 'models'}",
                        f"data.prepared_dir={tmp_path / 'data'}",
                        "train.eval_every=2", "train.eval.max_new_tokens=4",
                        "train.eval.lengths=[512]", "train.eval.perplexity.lengths=[128]"]
    code, _ = helpers.run_in_process(overrides, tmp_path / "run")
    assert code == 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "eval/niah_single/512" not in rows[0]  # step 1: not due
    assert 0.0 <= rows[1]["eval/niah_single/512"] <= 1.0
    assert rows[1]["eval/loss/128"] > 0 and 0.0 <= rows[1]["eval/sparsity/128"] <= 1.0

    from eval.config import EvalConfig, ModelSpec, PerplexityConfig
    from eval.load import load_model
    from eval.runner import evaluate

    model, tok = load_model(ModelSpec(path=str(tmp_path / "run")))  # its latest checkpoint
    assert type(model).__name__ == "L2AQwen3ForCausalLM"
    res = evaluate(model, tok, EvalConfig(tasks=[], lengths=[128],
                                          perplexity=PerplexityConfig(rows=1, buckets=4)).check(),
                   log=lambda s: None)
    # The same weights and held-out row as the in-training evaluation after step 2.
    assert res["perplexity"][0]["loss"] == pytest.approx(rows[1]["eval/loss/128"], rel=1e-4)

    # The prepared data as perplexity rows (its validation split) and as the haystack.
    from eval.haystack import Haystack, split_sentences
    from train.data import PreparedData
    from train.data.ruler import generate

    data = PreparedData.load(tmp_path / "data")
    first = data.example(int(data.split_indices("validation")[0]))
    res = evaluate(model, tok, EvalConfig(
        tasks=["niah_single"], lengths=[512], depths=[0.5], max_new_tokens=2,
        haystack=str(tmp_path / "data"),
        perplexity=PerplexityConfig(data=str(tmp_path / "data"), rows=1, buckets=4)).check(),
        log=lambda s: None)
    assert res["perplexity"][0]["tokens"] == int((first["labels"][1:] != -100).sum())
    text = "\n".join(tok.decode(data.row(int(i))[0].tolist(), skip_special_tokens=True)
                     for i in data.split_indices("validation"))
    hay = Haystack(str(tmp_path / "data"), tok)
    sample = generate("niah_single", 1024, tok, depth=1.0, haystack=hay, new_tokens=2)
    # The prompt reads the held-out text from its start (and the needle comes after it).
    first = split_sentences(text)[:2]
    assert " ".join(first) in sample.prompt


def test_bad_train_eval_is_a_config_error():
    from train.config import ConfigError

    # `python -m train` checks the block when it wires the evaluation in (train/__main__.py).
    with pytest.raises(ConfigError, match=r"train.eval.tasks.0: unknown task"):
        helpers.compose_entry(["experiment=tiny", "train.eval_every=5", "train.eval.tasks=[nope]"])
    with pytest.raises(ConfigError, match="train.eval_every: must be >= 0"):
        helpers.compose_run(["experiment=tiny", "train.eval_every=-1"])
    # A task that does not fit a length: the keys named are this block's.
    from eval_helpers import tiny_l2a

    from eval.training import TrainingEval
    from train.data import build_byte_tokenizer

    cfg = helpers.compose_run(["experiment=tiny", "train.eval_every=5",
                               "train.eval.tasks=[niah_single]", "train.eval.lengths=[100]"])
    with pytest.raises(ConfigError) as err:
        TrainingEval(cfg.train, tiny_l2a(), build_byte_tokenizer(), True, zero_stage=1)
    assert str(err.value).startswith("train.eval.lengths: niah_single at length 100: needs ")
    assert str(err.value).endswith("(use longer train.eval.lengths, or leave niah_single out "
                                   "of train.eval.tasks)")


def test_entry_point_hands_the_evaluator_to_the_trainer(tmp_path):
    from eval.training import build_training_eval
    from train.config import ConfigError
    from train.trainer import Trainer

    cfg, make = helpers.compose_entry(["experiment=tiny", "train.eval_every=5"])
    assert make is build_training_eval
    assert helpers.compose_entry(["experiment=tiny"])[1] is None
    # A trainer built without one refuses eval_every up front (before any model is built).
    with pytest.raises(ConfigError, match="train.eval_every: this entry point runs no evaluation"):
        Trainer(cfg, tmp_path / "run")
