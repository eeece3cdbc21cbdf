"""Config validation names the override path; every data config composes and validates."""

import glob
import os

import pytest
import yaml
from omegaconf import OmegaConf

from train.data import ConfigError, DataConfig

CONF = os.path.join(os.path.dirname(__file__), "..", "..", "conf")


@pytest.mark.parametrize(
    "override, message",
    [
        ({"seq_len": 0}, "data.seq_len: must be positive, got 0"),
        ({"seq_len": "long"}, "data.seq_len: must be an integer"),
        ({"sources": [{"path": "a.jsonl", "weight": -1}]}, "data.sources[0].weight: must be >= 0"),
        ({"sources": [{"path": "a.jsonl", "type": "csv"}]}, "data.sources[0].type: must be one of"),
        ({"sources": [{"path": "a.jsonl", "colour": 1}]}, "data.sources[0].colour: unknown key"),
        ({"sources": [{"path": None}]}, "data.sources[0].path: must be a hub dataset id"),
        (
            {"sources": [{"path": "a.jsonl"}, {"path": "b/a.jsonl"}]},
            "data.sources[1].name: duplicate",
        ),
        ({"long_doc_policy": "fold"}, "data.long_doc_policy: must be one of split, truncate, drop"),
        ({"packing": {"strategy": "magic"}}, "data.packing.strategy: must be one of bfd"),
        ({"short_share": 1.0}, "data.short_share: must be in [0.0, 1.0)"),
        ({"short_share": 0.3}, "data.short_share: is 0.3 but no source has short: true"),
        ({"upsample_long": {"factor": 0.5}}, "data.upsample_long.factor: must be >= 1.0"),
        (
            {"synthetic": {"enabled": True, "tasks": ["sudoku"]}},
            "data.synthetic.tasks[0]: must be one of",
        ),
        (
            {"synthetic": {"enabled": True, "min_tokens": 600, "max_tokens": 500}},
            "data.synthetic.max_tokens: must be >= 600",
        ),
        ({"max_bad_records": -1}, "data.max_bad_records: must be >= 0"),
        ({"sources": []}, "data.sources: no data"),
        ({"frobnicate": True}, "data.frobnicate: unknown key"),
    ],
)
def test_invalid_config_names_the_path(override, message):
    raw = {"sources": [{"path": "a.jsonl"}]}
    raw.update(override)
    with pytest.raises(ConfigError) as err:
        DataConfig.from_dict(raw)
    assert str(err.value).startswith(message.split(":")[0] + ":"), str(err.value)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_kwargs_and_defaults():
    cfg = DataConfig(seq_len=128, sources=[{"path": "corpus/train.parquet", "weight": 2}])
    assert cfg.sources[0].type == "parquet" and cfg.sources[0].name == "train"
    assert DataConfig.from_dict(cfg.to_dict()) == cfg
    hub = DataConfig.from_dict({"sources": [{"path": "emozilla/pg19"}]})
    assert hub.sources[0].type == "hub"


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONF, "data", "*.yaml"))))
def test_every_data_config_validates(path):
    raw = OmegaConf.to_container(
        OmegaConf.create({"name": "x", "data": yaml.safe_load(open(path))}), resolve=True
    )["data"]
    cfg = DataConfig.from_dict(raw)
    assert cfg.seq_len > 0 and (cfg.sources or cfg.synthetic.enabled)


def test_every_experiment_composes_with_valid_data():
    pytest.importorskip("hydra")
    from train.data.prepare import compose, tokenizer_spec

    names = [
        os.path.splitext(os.path.basename(p))[0]
        for p in glob.glob(os.path.join(CONF, "experiment", "*.yaml"))
    ]
    assert names
    for name in names:
        cfg = compose("config", [f"experiment={name}"])
        data = DataConfig.from_dict(OmegaConf.to_container(cfg.data, resolve=True))
        assert data.seq_len in (512, 131072) or data.seq_len > 0
        assert tokenizer_spec(cfg)


def test_long_mix_is_the_128k_recipe():
    raw = OmegaConf.to_container(
        OmegaConf.create(
            {"name": "x", "data": yaml.safe_load(open(os.path.join(CONF, "data", "long_mix.yaml")))}
        ),
        resolve=True,
    )["data"]
    cfg = DataConfig.from_dict(raw)
    assert cfg.seq_len == 131072
    assert cfg.upsample_long.active and cfg.short_share and cfg.short_share > 0
    assert all(s.type == "hub" for s in cfg.sources)
    assert any(s.short for s in cfg.sources) and any(not s.short for s in cfg.sources)
