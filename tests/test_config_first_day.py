"""Overrides a new user writes on the first day: a real base with a preset built on a random
one, and the data seed of docs/DATA.md."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import train.config  # noqa: F401  (registers the l2a_timestamp resolver)
from train.config import ConfigError, from_hydra

CONF = Path(__file__).resolve().parent.parent / "conf"


def _validate(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return from_hydra(cfg, overrides)


def test_model_base_on_the_command_line_replaces_the_presets_random_base():
    run = _validate(["experiment=tiny", "model.base=/models/qwen3-0.6b"])
    assert run.model.base == "/models/qwen3-0.6b" and run.model.random_base is None
    # The preset's own random base still stands without the override.
    assert _validate(["experiment=tiny"]).model.random_base["hidden_size"] == 64


def test_both_set_explicitly_names_the_override_to_add():
    with pytest.raises(ConfigError) as e:
        _validate(["experiment=tiny", "model.base=/m", "model.random_base.hidden_size=32"])
    assert str(e.value).startswith("model.base: set exactly one of model.base and "
                                   "model.random_base")
    assert "add model.random_base=null" in str(e.value)


def test_data_seed_is_an_override_without_plus():
    """docs/DATA.md: `data.seed` gives the data a seed of its own (it needed `+data.seed`)."""
    assert _validate(["experiment=tiny", "data.seed=7"]).data.seed == 7
    assert _validate(["experiment=tiny"]).data.seed is None
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=qwen3_128k", "data.seed=3"])
    assert from_hydra(cfg).data.seed == 3


def test_model_base_directory_that_does_not_exist(tmp_path):
    import torch

    from train.build_model import _create

    missing = tmp_path / "qwen3-8b"
    run = _validate(["experiment=tiny", f"model.base={missing}"])
    with pytest.raises(ConfigError) as e:
        _create(run, torch.float32, torch.device("cpu"))
    assert str(e.value) == f"model.base: {missing}: no such directory"
