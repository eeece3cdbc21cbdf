"""What a converted model is, apart from how it runs.

* The conversion cache is keyed on the base's content: a base rebuilt in place is converted
  again (end to end through `python -m train`); tokenizer files added change the key.
* Runtime switches (`l2a.attn_backend`, `l2a.dense_prob`, ...) reuse the cached conversion,
  reach the model as `model.l2a_runtime` and are never saved into its config; an old config
  that carries them still loads.
* A cache under the previous key is reused if it matches, else reported.
* `model.base=<an L2A model>` trains it further with its own L2A settings.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from train_helpers import compose_run, run_cli

import train.build_model as build_model_mod
from train.build_model import build_model
from train.distributed import DistInfo
from train.model_cache import directory_fingerprint, legacy_cached_model_dir
from train.tiny_base import TINY_SHAPE, build_tiny_base

RUNTIME_KEYS = {"l2a_attn_backend", "l2a_dense_prob", "l2a_routed_projections",
                "l2a_routed_rows", "l2a_fused_elementwise"}
CPU = DistInfo(0, 1, 0, torch.device("cpu"))


def _trained_config(run_dir: Path) -> dict:
    (ckpt,) = sorted((run_dir / "checkpoints").glob("step_*"))
    return json.loads((ckpt / "hf" / "config.json").read_text())


def _one_step(base_overrides, tmp_path, *extra) -> list[str]:
    """One optimizer step, saved; the shared prepared data, a model cache of this test."""
    keep = [o for o in base_overrides
            if not o.startswith(("train.max_steps", "train.ckpt_every", "model.cache_dir"))]
    return keep + ["train.max_steps=1", "train.ckpt_every=0", "train.save_final=true",
                   f"model.cache_dir={tmp_path / 'models'}", *extra]


def test_base_rebuilt_in_place_is_converted_again_and_an_l2a_base_trains_on(base_overrides,
                                                                           tmp_path):
    base = tmp_path / "base"
    build_tiny_base(base, shape=TINY_SHAPE)
    args = _one_step(base_overrides, tmp_path, f"model.base={base}", "l2a.window=24")
    first = run_cli(args, tmp_path / "run1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert _trained_config(tmp_path / "run1")["num_hidden_layers"] == 2
    # The same path, another model: three layers now.
    build_tiny_base(base, shape={**TINY_SHAPE, "num_hidden_layers": 3}, overwrite=True)
    second = run_cli(args, tmp_path / "run2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert _trained_config(tmp_path / "run2")["num_hidden_layers"] == 3
    conversions = sorted((tmp_path / "models").glob("base-l2a-*"))
    assert len(conversions) == 2

    # A stage 2 from the three-layer conversion: its window (24), not the preset's (32).
    (converted,) = [c for c in conversions
                    if json.loads((c / "config.json").read_text())["num_hidden_layers"] == 3]
    stage2 = _one_step(base_overrides, tmp_path, f"model.base={converted}")
    third = run_cli(stage2, tmp_path / "run3")
    assert third.returncode == 0, third.stderr[-3000:]
    trained = _trained_config(tmp_path / "run3")
    assert trained["l2a_window"] == 24 and trained["num_hidden_layers"] == 3
    assert len(list((tmp_path / "models").glob("*-l2a-*"))) == 2  # nothing converted
    # An override that changes what the weights mean: one line, exit 2, no run.
    refused = run_cli(stage2 + ["l2a.window=16"], tmp_path / "run4")
    assert refused.returncode == 2
    errors = [ln for ln in refused.stderr.splitlines() if ln.startswith("error")]
    assert errors == [f"error: l2a.window: model.base {converted} is an L2A model with window=24; "
                      "another value changes what its weights mean (drop the override), got 16"]
    assert not (tmp_path / "run4").exists()


def test_tokenizer_files_added_later_change_the_key(tmp_path):
    base = build_tiny_base(tmp_path / "base")
    for f in base.iterdir():
        if "token" in f.name:
            f.unlink()
    before = directory_fingerprint(base)
    build_tiny_base(tmp_path / "other")
    for f in (tmp_path / "other").iterdir():
        if "token" in f.name:
            (base / f.name).write_bytes(f.read_bytes())
    assert directory_fingerprint(base) != before


@pytest.fixture
def count_conversions(monkeypatch):
    calls = []
    real = build_model_mod._create

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(build_model_mod, "_create", counting)
    return calls


def test_runtime_switches_reuse_the_conversion_and_stay_out_of_the_config(tmp_path,
                                                                         count_conversions):
    cache = f"model.cache_dir={tmp_path}"
    build_model(compose_run(["experiment=tiny", cache, "l2a.attn_backend=torch"]), CPU, torch.float32)
    cfg = compose_run(["experiment=tiny", cache, "l2a.attn_backend=auto", "l2a.dense_prob=0.3",
                       "l2a.routed_projections=true", "l2a.routed_rows=capacity",
                       "l2a.fused_elementwise=true"])
    model, _, path, _ = build_model(cfg, CPU, torch.float32)
    assert len(count_conversions) == 1  # converted once, for the first
    run = model.l2a_runtime
    assert (run.attn_backend, run.routed_projections, run.fused_elementwise) == ("auto", True, True)
    assert run.routed_rows == "capacity"
    assert not RUNTIME_KEYS & set(model.config.to_dict())
    assert not RUNTIME_KEYS & set(json.loads((path / "config.json").read_text()))
    with pytest.raises(AttributeError, match="model.l2a_runtime.attn_backend"):
        model.config.l2a_attn_backend = "triton"


def test_an_old_config_with_runtime_switches_loads_with_the_defaults(tmp_path, count_conversions,
                                                                     caplog):
    from transformers import AutoModelForCausalLM

    cfg = compose_run(["experiment=tiny", f"model.cache_dir={tmp_path}"])
    _, _, path, _ = build_model(cfg, CPU, torch.float32)
    config = json.loads((path / "config.json").read_text())
    config.update(l2a_attn_backend="triton", l2a_routed_projections=True, l2a_dense_prob=0.3)
    (path / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING, logger="l2a.configuration"):
        model = AutoModelForCausalLM.from_pretrained(path)
    assert "ignoring runtime settings saved in an older config" in caplog.text
    assert (model.l2a_runtime.attn_backend, model.l2a_runtime.routed_projections) == ("auto", False)
    model.save_pretrained(tmp_path / "again")
    assert not RUNTIME_KEYS & set(json.loads((tmp_path / "again" / "config.json").read_text()))
    ids = torch.randint(0, 256, (1, 40))
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()  # runs with the default backend


def _legacy_cache(cfg, **edit) -> Path:
    """A conversion as the previous key stored it: runtime switches in its config."""
    from l2a.convert import save_atomically

    legacy = legacy_cached_model_dir(cfg)
    model, tokenizer = build_model_mod._create(cfg, torch.float32, torch.device("cpu"))
    save_atomically(model, tokenizer, legacy)
    config = json.loads((legacy / "config.json").read_text())
    config.update(l2a_attn_backend="auto", l2a_dense_prob=0.1, **edit)
    (legacy / "config.json").write_text(json.dumps(config))
    return legacy


def test_a_cache_under_the_previous_key_is_reused_when_it_matches(tmp_path, count_conversions,
                                                                  capsys):
    cfg = compose_run(["experiment=tiny", f"model.cache_dir={tmp_path}"])
    legacy = _legacy_cache(cfg)
    count_conversions.clear()
    _, _, path, _ = build_model(cfg, CPU, torch.float32)
    assert count_conversions == [] and path != legacy and not legacy.exists()
    assert f"reusing {legacy.name}" in capsys.readouterr().out
    assert not RUNTIME_KEYS & set(json.loads((path / "config.json").read_text()))


def test_a_cache_under_the_previous_key_that_differs_is_reported(tmp_path, count_conversions,
                                                                capsys):
    cfg = compose_run(["experiment=tiny", f"model.cache_dir={tmp_path}"])
    legacy = _legacy_cache(cfg, l2a_window=99)  # not what converting the base gives now
    count_conversions.clear()
    _, _, path, _ = build_model(cfg, CPU, torch.float32)
    assert len(count_conversions) == 1 and legacy.exists()
    assert json.loads((path / "config.json").read_text())["l2a_window"] == 32
    out = capsys.readouterr().out
    assert f"{legacy} was cached under the previous key and is not used (its l2a_window is 99" in out
