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
        ({"seq_len": 0}, "data.seq_len: must be >= 8, got 0"),
        ({"seq_len": "long"}, "data.seq_len: must be an integer"),
        ({"sources": [{"path": "a.jsonl", "weight": -1}]}, "data.sources.0.weight: must be >= 0"),
        ({"sources": [{"path": "a.jsonl", "type": "csv"}]}, "data.sources.0.type: must be one of"),
        ({"sources": [{"path": "a.jsonl", "colour": 1}]}, "data.sources.0.colour: unknown key"),
        ({"sources": [{"path": None}]}, "data.sources.0.path: must be a hub dataset id"),
        (
            {"sources": [{"path": "a.jsonl"}, {"path": "b/a.jsonl"}]},
            "data.sources.1.name: duplicate",
        ),
        ({"long_doc_policy": "fold"}, "data.long_doc_policy: must be one of split, truncate, drop"),
        ({"packing": {"strategy": "magic"}}, "data.packing.strategy: must be one of bfd"),
        ({"short_share": 1.0}, "data.short_share: must be null or in [0, 1), got 1.0"),
        ({"short_share": 0.3}, "data.short_share: is 0.3 but no source has short: true"),
        ({"upsample_long": {"factor": 0.5}}, "data.upsample_long.factor: must be >= 1, got 0.5"),
        (
            {"synthetic": {"enabled": True, "tasks": ["sudoku"]}},
            "data.synthetic.tasks.0: must be one of",
        ),
        (
            {"synthetic": {"enabled": True, "min_tokens": 600, "max_tokens": 500}},
            "data.synthetic.max_tokens: must be >= 600",
        ),
        ({"max_bad_records": -1}, "data.max_bad_records: must be >= 0"),
        # NaN and infinity pass every range check; each number is finite where it is read.
        ({"sources": [{"path": "a.jsonl", "weight": float("nan")}]},
         "data.sources.0.weight: must be a finite number, got nan"),
        ({"upsample_long": {"factor": float("inf"), "min_tokens": 8}},
         "data.upsample_long.factor: must be a finite number, got inf"),
        ({"short_share": float("nan")}, "data.short_share: must be a finite number, got nan"),
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
    """Validation keeps what the file says: length, sources (name, weight, type), policy."""
    written = yaml.safe_load(open(path))
    raw = OmegaConf.to_container(OmegaConf.create({"name": "x", "data": written}), resolve=True)["data"]
    cfg = DataConfig.from_dict(raw)
    assert cfg.seq_len == written["seq_len"]
    assert cfg.long_doc_policy == written["long_doc_policy"]
    assert [s.name for s in cfg.sources] == [s["name"] for s in written["sources"]]
    assert [s.weight for s in cfg.sources] == [s.get("weight", 1.0) for s in written["sources"]]
    assert [s.type for s in cfg.sources] == [s["type"] for s in written["sources"]]
    assert cfg.synthetic.enabled == written.get("synthetic", {}).get("enabled", False)


# What each experiment trains on, as the README and conf/experiment/*.yaml state it.
EXPERIMENT_DATA = {
    "tiny": (512, ["generated_text"], "byte"),
    "tiny_dense": (512, ["generated_text"], "byte"),
    "qwen3_128k": (131072, ["books", "code", "arxiv", "fineweb_edu", "wikipedia"], "Qwen/Qwen3-8B"),
    "qwen3_128k_dense": (131072, ["books", "code", "arxiv", "fineweb_edu", "wikipedia"],
                         "Qwen/Qwen3-8B"),
    "qwen25_128k": (131072, ["books", "code", "arxiv", "fineweb_edu", "wikipedia"],
                    "Qwen/Qwen2.5-7B"),
    # The study (study/RESULTS.md): the byte tokenizer; extension arms at 8K by default.
    "study_base": (2048, ["stdlib", "packages"], "byte"),
    **{arm: (8192, ["stdlib", "packages"], "byte")
       for arm in ("study_dense", "study_l2a", "study_l2a_s08", "study_l2a_s09")},
}


def test_every_experiment_composes_with_valid_data():
    pytest.importorskip("hydra")
    from train.data.prepare import compose, tokenizer_spec

    # conf/ and the study's configs on its Hydra search path (conf/config.yaml).
    study_conf = os.path.join(os.path.dirname(CONF), "study", "conf")
    names = sorted(
        os.path.splitext(os.path.basename(p))[0]
        for d in (CONF, study_conf)
        for p in glob.glob(os.path.join(d, "experiment", "*.yaml"))
    )
    assert names == sorted(EXPERIMENT_DATA), "a new experiment: add its data to EXPERIMENT_DATA"
    for name in names:
        cfg = compose("config", [f"experiment={name}"])
        data = DataConfig.from_dict(OmegaConf.to_container(cfg.data, resolve=True))
        seq_len, sources, tokenizer = EXPERIMENT_DATA[name]
        assert data.seq_len == seq_len, name
        assert [s.name for s in data.sources] == sources, name
        assert tokenizer_spec(cfg) == tokenizer, name


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
