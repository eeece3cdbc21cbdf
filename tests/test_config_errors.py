"""One error type and one way of checking for every config (train, data, eval, the L2A
layer, prune); NaN and infinity refused wherever a number is read; values legal alone but
not together refused; Hydra's own errors (override typo, unknown option, YAML) one line and
exit code 2 at each entry point."""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import train.config  # noqa: F401  (resolver)
from l2a.errors import ConfigError
from train.config import from_hydra

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"


def _validate(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return from_hydra(compose(config_name="config", overrides=overrides), overrides)


def test_every_config_raises_the_one_config_error():
    import train.data
    import train.data.errors
    from eval.config import build_eval, build_model_spec
    from l2a.configuration import L2AQwen3Config
    from train.data import DataConfig
    from train.sparsity import SparsityConfig

    assert train.config.ConfigError is ConfigError is train.data.ConfigError
    assert train.data.errors.ConfigError is ConfigError
    raisers = [
        lambda: _validate(["experiment=tiny", "train.max_steps=0"]),
        lambda: DataConfig.from_dict({"seq_len": 4}),
        lambda: SparsityConfig(multiplier_lr=-1.0),
        lambda: build_eval({"samples": 0}),
        lambda: build_model_spec({"random": "tiny", "window": 0}),
        lambda: L2AQwen3Config(l2a_window=0),
    ]
    for raise_it in raisers:
        with pytest.raises(ConfigError) as e:
            raise_it()
        assert "\n" not in str(e.value)


# The L2A layer's rules are written once (l2a/validate.py) and named where each is set: the
# trainer's l2a.*, a model's config.json field l2a_*, the evaluation's model.window.
@pytest.mark.parametrize("field, value, rule", [
    ("window", 0, "must be >= 1, got 0"),
    ("router_tau", 0.0, "must be > 0, got 0.0"),
    ("router_threshold", 1.0, "must be in (0, 1), got 1.0"),
    ("dense_prob", math.nan, "must be a finite number, got nan"),
    ("init", "zero", "must be one of paper, identity, got 'zero'"),
])
def test_l2a_fields_have_one_rule_under_every_name(field, value, rule):
    from eval.config import build_model_spec
    from l2a.configuration import L2AQwen3Config

    with pytest.raises(ConfigError) as trainer:
        _validate(["experiment=tiny", f"l2a.{field}={value}"])
    assert str(trainer.value) == f"l2a.{field}: {rule}"
    if field != "dense_prob":  # a training setting, not a field of the model's config
        with pytest.raises(ConfigError) as model:
            L2AQwen3Config(**{f"l2a_{field}": value})
        assert str(model.value) == f"l2a_{field}: {rule}"
    if field == "window":
        with pytest.raises(ConfigError) as ev:
            build_model_spec({"random": "tiny", "window": value})
        assert str(ev.value) == f"model.window: {rule}"


@pytest.mark.parametrize("override", [
    "optim.lr=nan", "optim.lr=inf", "optim.betas=[0.9,nan]", "optim.eps=inf",
    "optim.warmup_ratio=nan", "optim.min_lr_ratio=nan", "optim.weight_decay=inf",
    "l2a.router_tau=inf", "l2a.lambda_final=nan", "l2a.sparsity_target=nan",
    "+l2a.multiplier_lr=inf", "+l2a.target_ramp=nan", "train.grad_clip=nan",
    "model.rope_theta=inf", "data.sources.0.weight=nan", "data.synthetic.weight=inf",
    "data.upsample_long.factor=inf",
])
def test_nan_and_infinity_are_refused_with_the_override_path(override):
    key, value = override.lstrip("+").split("=")
    with pytest.raises(ConfigError) as e:
        _validate(["experiment=tiny", override])
    want = "nan" if "nan" in value else "inf"
    assert str(e.value).startswith(key.split("[")[0]), str(e.value)
    assert str(e.value).endswith(f"must be a finite number, got {want}"), str(e.value)


def test_list_entries_are_named_by_their_override_path():
    """`data.sources.0.weight` is what Hydra accepts on the command line (not `[0]`)."""
    with pytest.raises(ConfigError) as e:
        _validate(["experiment=tiny", "data.sources.0.weight=-1"])
    assert str(e.value) == "data.sources.0.weight: must be >= 0, got -1"
    run = _validate(["experiment=tiny", "data.sources.0.weight=2"])  # the path works
    assert run.data.sources[0].weight == 2.0


@pytest.mark.parametrize("overrides, message", [
    (["data.seq_len=4096"], "data.seq_len: 4096 is above the model's context "
                            "(model.random_base.max_position_embeddings=2048)"),
    (["model.max_position_embeddings=1024", "data.seq_len=2048"],
     "data.seq_len: 2048 is above the model's context (model.max_position_embeddings=1024)"),
    (["train.global_batch_size=8", "train.grad_accum_steps=2"],
     "train.grad_accum_steps: is derived from train.global_batch_size when that is set; set "
     "one of them, got 2"),
    (["l2a=dense", "l2a.sparsity_target=0.5"], "l2a.sparsity_target: has no effect with "
     "l2a.enabled=false (the dense baseline has no router), got 0.5"),
    (["train.save_final=false"], "train.save_final: false has no effect while "
     "train.export=true (the export is made from the final checkpoint)"),
    (["data.upsample_long.factor=1.0"], "data.upsample_long.min_tokens: has no effect unless "
     "both data.upsample_long.min_tokens > 0 and data.upsample_long.factor > 1, got 512"),
])
def test_values_legal_alone_but_not_together_are_refused(overrides, message):
    with pytest.raises(ConfigError) as e:
        _validate(["experiment=tiny", *overrides])
    assert str(e.value) == message


def test_sequence_within_the_window_is_a_warning():
    assert _validate(["experiment=tiny"]).warnings == []
    run = _validate(["experiment=tiny", "l2a.window=512"])
    assert run.warnings and run.warnings[0].startswith(
        "data.seq_len=512 is within l2a.window=512")
    assert _validate(["experiment=tiny", "l2a=dense", "l2a.window=512"]).warnings == []


def test_a_data_tokenizer_other_than_the_models_is_refused():
    """The trainer tokenizes with the model's tokenizer: another data.tokenizer would be
    used by `train.data.prepare` only."""
    from transformers import PreTrainedTokenizerFast

    from train.data.tokenizer import build_byte_tokenizer, check_same_tokenizer

    model_tok = build_byte_tokenizer()
    check_same_tokenizer(None, model_tok)
    check_same_tokenizer("byte", model_tok)  # the same tokenizer, named another way
    other = PreTrainedTokenizerFast(tokenizer_object=model_tok.backend_tokenizer,
                                    eos_token=model_tok.eos_token)
    other.add_tokens(["<extra>"])
    with pytest.raises(ConfigError, match=r"^data.tokenizer: 'byte' encodes differently"):
        check_same_tokenizer("byte", other)


# ------------------------------------------------------------------ Hydra's own errors
def _run_train(monkeypatch, capsys, argv, conf=CONF):
    import train.__main__ as entry

    monkeypatch.setattr(entry, "CONF_DIR", str(conf))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["train", *argv])
    with pytest.raises(SystemExit) as e:
        entry.main()
    return e.value.code, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


@pytest.mark.parametrize("override, line", [
    ("trian.max_steps=3", "error: trian.max_steps: unknown key (a typo? a new key is added "
                          "with a leading +: +trian.max_steps=...)"),
    ("l2a=sparse", "error: l2a=sparse: unknown option of group l2a (known: dense, identity, "
                   "paper)"),
    ("train.max_steps=[", "error: train.max_steps=[: cannot parse this override (no viable "
                          "alternative at input '[')"),
])
def test_hydra_errors_are_one_line_exit_2(monkeypatch, capsys, tmp_path, override, line):
    code, err = _run_train(monkeypatch, capsys,
                           ["experiment=tiny", override, f"hydra.run.dir={tmp_path / 'run'}"])
    assert (code, err) == (2, [line])
    assert not (tmp_path / "run").exists()


def test_yaml_error_in_conf_local_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "local" / "default.yaml").write_text("model:\n  base: [unclosed\n")
    code, err = _run_train(monkeypatch, capsys,
                           ["experiment=tiny", f"hydra.run.dir={tmp_path / 'run'}"], conf)
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"error: {conf / 'local' / 'default.yaml'}:3:1: "
                                               "invalid YAML ("), err


def test_prepare_and_eval_report_hydra_errors_the_same_way(monkeypatch, capsys, tmp_path):
    import eval.__main__ as eval_entry
    from train.data.prepare import main as prepare

    assert prepare(["experiment=tiny", "data.sources.0.wieght=1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: data.sources.0.wieght: unknown key (a typo? a new key is added with a leading "
        "+: +data.sources.0.wieght=...)"]
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["eval", "eval=nope", f"hydra.run.dir={tmp_path / 'e'}"])
    with pytest.raises(SystemExit) as e:
        eval_entry.main()
    assert e.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == ["error: eval=nope: unknown option of group eval (known: default, tiny)"]
