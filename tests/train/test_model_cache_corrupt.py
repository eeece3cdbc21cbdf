"""A corrupt converted model under model.cache_dir: one line naming it and how to clear it."""

from __future__ import annotations

import pytest
import torch
from train_helpers import compose_run

from train.build_model import build_model, cached_model_dir
from train.config import ConfigError
from train.distributed import DistInfo


@pytest.mark.parametrize("damage", ["config", "weights"])
def test_corrupt_cached_model_names_the_path_and_the_fix(tmp_path, damage):
    cfg = compose_run(["experiment=tiny", f"model.cache_dir={tmp_path}"])
    path = cached_model_dir(cfg)
    path.mkdir(parents=True)
    if damage == "config":
        (path / "config.json").write_text('{"model_type": "l2a_qwen3", ')  # truncated
    else:  # a valid config, weights cut short
        from transformers import AutoConfig

        import l2a  # noqa: F401
        from l2a.convert import convert_model
        from train.tiny_base import byte_tokenizer, qwen3_config, random_qwen3

        base = random_qwen3(qwen3_config(cfg.model.random_base, vocab_size=len(byte_tokenizer())))
        convert_model(base, window=cfg.l2a.window).save_pretrained(path)
        weights = path / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        assert AutoConfig.from_pretrained(path).model_type == "l2a_qwen3"
    dist = DistInfo(0, 1, 0, torch.device("cpu"))
    with pytest.raises(ConfigError) as e:
        build_model(cfg, dist, torch.float32)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"model.cache_dir: the cached converted model {path} is unreadable (")
    assert msg.endswith(f"delete it (rm -r {path}) to convert again")


def test_a_killed_cache_write_is_removed_by_the_next_run(tmp_path):
    """A conversion killed while writing the cache leaves its temporary directory (the whole
    model's size): the next run removes it, whether it converts (the entry is missing) or
    finds the entry another writer completed."""
    from l2a.convert import temp_prefix

    cfg = compose_run(["experiment=tiny", f"model.cache_dir={tmp_path}"])
    dist = DistInfo(0, 1, 0, torch.device("cpu"))
    path = cached_model_dir(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    killed = path.parent / f"{temp_prefix(path)}killed1"  # unlocked: its writer is gone
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"half")
    build_model(cfg, dist, torch.float32)  # converts
    assert (path / "config.json").is_file() and not killed.exists()
    killed.mkdir()
    build_model(cfg, dist, torch.float32)  # reuses the entry
    assert not killed.exists()
    leftovers = [p.name for p in path.parent.iterdir() if ".tmp-" in p.name]
    assert leftovers == []
