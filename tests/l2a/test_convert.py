"""`python -m l2a.convert`: round trip through disk, and bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import l2a  # noqa: F401
from l2a.convert import main

REPO = Path(__file__).resolve().parents[2]


def save_tokenizer(path: Path) -> None:
    """A word-level tokenizer of a few tokens: what a base directory needs beside its weights."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "a": 1, "b": 2}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")),
                            unk_token="[UNK]").save_pretrained(path)


@pytest.fixture
def base_dir(base_model, tmp_path):
    path = tmp_path / "base"
    base_model.save_pretrained(path)
    save_tokenizer(path)
    return path


def test_cli_round_trip_identity(base_model, base_dir, tmp_path):
    out = tmp_path / "l2a"
    rc = main([
        "--base", str(base_dir), "--out", str(out), "--init", "identity", "--window", "16",
        "--rope-theta", "5e6", "--max-position-embeddings", "4096",
    ])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == f"l2a_{base_model.config.model_type}"
    assert cfg["l2a_window"] == 16 and cfg["l2a_init"] == "identity"
    assert cfg["rope_parameters"]["rope_theta"] == 5e6 and cfg["max_position_embeddings"] == 4096
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    same_theta = tmp_path / "l2a_same_theta"
    assert main(["--base", str(base_dir), "--out", str(same_theta), "--init", "identity"]) == 0
    same = AutoModelForCausalLM.from_pretrained(same_theta, dtype=torch.float32)
    ids = torch.randint(0, base_model.config.vocab_size, (1, 30))
    with torch.no_grad():
        # Identity init reproduces the base logits after a round trip through disk.
        torch.testing.assert_close(same(ids).logits, base_model(ids).logits, atol=2e-5, rtol=1e-5)
        # A raised theta changes RoPE, hence the logits: the override really took effect.
        assert (model(ids).logits - same(ids).logits).abs().max() > 1e-4


def test_cli_subprocess_error_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "l2a.convert", "--base", str(tmp_path / "missing"), "--out", str(tmp_path / "o")],
        cwd=REPO, capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("l2a.convert")]
    assert len(lines) == 1 and "no such directory" in lines[0]
    assert not (tmp_path / "o").exists()


def test_unknown_architecture(tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    base = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(base)
    capsys.readouterr()
    assert main(["--base", str(base), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unsupported architecture 'llama'" in err[0]
    assert not (tmp_path / "o").exists()


def test_corrupt_weights(base_dir, tmp_path, capsys):
    weights = base_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    assert main(["--base", str(base_dir), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot load the weights" in err[0]
    assert not (tmp_path / "o").exists()
    assert not list(tmp_path.glob(".o.tmp-*"))


def test_missing_weights(base_dir, tmp_path, capsys):
    (base_dir / "model.safetensors").unlink()
    assert main(["--base", str(base_dir), "--out", str(tmp_path / "o")]) == 2
    assert "cannot load the weights" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_bad_l2a_value_and_existing_output(base_dir, tmp_path, capsys):
    assert main(["--base", str(base_dir), "--out", str(tmp_path / "o"), "--window", "0"]) == 2
    assert "l2a_window: must be >= 1" in capsys.readouterr().err
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["--base", str(base_dir), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "x"


@pytest.mark.parametrize("tied", [True, False])
def test_conversion_keeps_tied_embeddings_tied(make_base, family, tied, tmp_path):
    """A base that ties lm_head to the embeddings (small Qwen models) gives an L2A model
    that ties them too, in memory and after save/load: no second copy of the vocabulary
    matrix. An untied base stays untied."""
    from l2a.convert import convert_model, save_atomically

    base = make_base(family, tie_word_embeddings=tied)
    if not tied:
        with torch.no_grad():
            base.lm_head.weight.normal_()
    model = convert_model(base)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    assert torch.equal(model.lm_head.weight, base.lm_head.weight)
    added = sum(p.numel() for n, p in model.named_parameters() if "global_" in n or "router" in n)
    assert (
        sum(p.numel() for p in model.parameters())
        == sum(p.numel() for p in base.parameters()) + added
    )
    save_atomically(model, None, tmp_path / "l2a")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "l2a")
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tied
    assert torch.equal(loaded.lm_head.weight, base.lm_head.weight)


def _edit_config(base_dir: Path, **values) -> None:
    path = base_dir / "config.json"
    config = json.loads(path.read_text())
    for key, value in values.items():
        if key == "rope_theta":
            config.setdefault("rope_parameters", {"rope_type": "default"})["rope_theta"] = value
        else:
            config[key] = value
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("family", ["qwen3"])
@pytest.mark.parametrize("case, expect", [
    (["--rope-theta=-5e6"], "--rope-theta: must be a positive number, got -5000000.0"),
    (["--rope-theta", "0"], "--rope-theta: must be a positive number, got 0.0"),
    (["--max-position-embeddings", "0"], "--max-position-embeddings: must be a positive integer, got 0"),
    ({"rope_theta": -1.0}, "config.json: rope_theta: must be a positive number, got -1.0"),
    ({"num_key_value_heads": 3}, "config.json: num_key_value_heads: must divide num_attention_heads (4), got 3"),
    ("no_tokenizer", "no tokenizer (none of tokenizer.json"),
])
def test_refuses_what_cannot_work(base_dir, tmp_path, capsys, case, expect):
    """NaN logits (theta <= 0), an empty context, heads that do not group, a model without a
    tokenizer: one line naming the value, exit 2, nothing written."""
    flags = case if isinstance(case, list) else []
    if isinstance(case, dict):
        _edit_config(base_dir, **case)
    if case == "no_tokenizer":
        for f in base_dir.iterdir():
            if "token" in f.name:
                f.unlink()
    capsys.readouterr()
    assert main(["--base", str(base_dir), "--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*"))
