"""Pruning global branches (l2a.prune, the command train.prune): a layer whose router never fires prunes without
changing a logit, pruning a used layer changes them, the pruned model round-trips through
AutoModelForCausalLM, and the CLI rejects bad input without writing anything."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from l2a.cache import L2ACache
from l2a.convert import convert_model
from l2a.prune import (
    PruneError,
    measure_global_usage,
    prune_global_branches,
    select_global_layers,
)
from train.data.tokenizer import build_byte_tokenizer
from train.prune import main  # the command (calibration reads train.data)

SILENT = 1  # the layer whose router never fires


@pytest.fixture
def model(make_base, family):
    """3 layers; threshold 0.6 puts the routing logit threshold above 0, and a zero global
    norm makes layer 1's router logit exactly 0 for every token: it never routes. The other
    routers are random and route part of the tokens."""
    base = make_base(family, layers=3)
    m = convert_model(base, init="paper", window=4, router_threshold=0.6)
    torch.manual_seed(3)
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.router.weight.normal_(0, 1.0)
        m.model.layers[SILENT].self_attn.global_norm.weight.zero_()
    return m.eval()


def _ids(n=40, rows=2, seed=0):
    return torch.randint(1, 258, (rows, n), generator=torch.Generator().manual_seed(seed))


def test_usage_per_layer(model):
    usage = measure_global_usage(model, [{"input_ids": _ids()}])
    assert usage[SILENT] == 0.0
    assert 0.0 < usage[0] <= 1.0 and 0.0 < usage[2] <= 1.0
    with torch.no_grad():
        routes = model(_ids(), use_cache=False).routes
    assert usage[0] == pytest.approx(float(routes[0].float().mean()))


def test_pruning_a_silent_layer_keeps_every_logit(model):
    ids = _ids()
    with torch.no_grad():
        before = model(ids, use_cache=False).logits
    prune_global_branches(model, [0, 2])
    assert not hasattr(model.model.layers[SILENT].self_attn, "global_attn")
    with torch.no_grad():
        after = model(ids, use_cache=False).logits
    assert torch.equal(before, after)


def test_pruning_a_used_layer_changes_the_logits(model):
    ids = _ids()
    with torch.no_grad():
        before = model(ids, use_cache=False).logits
    prune_global_branches(model, [SILENT, 2])
    with torch.no_grad():
        after = model(ids, use_cache=False).logits
    assert (after - before).abs().max() > 1e-3


def test_pruned_model_round_trip_and_cache(model, tmp_path):
    prune_global_branches(model, [2])
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["l2a_global_layers"] == [2]
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert not any("global" in n or "router" in n for n in loaded.state_dict() if ".layers.0." in n)
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(ids, use_cache=False).logits, model(ids, use_cache=False).logits
        )
        cache = loaded(ids, use_cache=True).past_key_values
    # 3 local slots (window - 1 = 3 tokens) + 1 global slot (40 tokens), 256 bytes per token
    assert isinstance(cache, L2ACache) and len(cache.layers) == 4
    assert cache.kv_bytes() == 2 * (3 * 3 + 40) * 256
    out = loaded.generate(ids[:1, :9], max_new_tokens=5, do_sample=False)
    full = loaded(out, use_cache=False).logits
    assert torch.equal(out[0, 9:], full[0, 8:-1].argmax(-1))


def test_selection_rules():
    usage = {0: 0.30, 2: 0.05, 5: 0.20, 7: 0.05}
    cand = sorted(usage)
    assert select_global_layers(usage, cand, threshold=0.1) == [0, 5]
    assert select_global_layers(usage, cand, keep=3) == [0, 2, 5]  # tie: the earlier layer
    assert select_global_layers(usage, cand, keep_fraction=0.5) == [0, 5]
    assert select_global_layers(None, cand, keep_layers=[7]) == [7]
    with pytest.raises(PruneError, match="not layers with a global branch"):
        select_global_layers(usage, cand, keep_layers=[1])
    with pytest.raises(PruneError, match="exactly one"):
        select_global_layers(usage, cand, threshold=0.1, keep=2)


@pytest.fixture
def saved(model, tmp_path):
    path = tmp_path / "model"
    model.save_pretrained(path)
    build_byte_tokenizer(path)
    return path


@pytest.mark.parametrize("family", ["qwen3"])
def test_cli_prunes_on_haystacks(saved, tmp_path, capsys):
    out = tmp_path / "pruned"
    rc = main(
        [
            "--model",
            str(saved),
            "--out",
            str(out),
            "--haystack",
            "--num-samples",
            "2",
            "--seq-len",
            "200",
            "--threshold",
            "0.01",
            "--context",
            "1000",
        ]
    )
    assert rc == 0
    report = json.loads((out / "prune_report.json").read_text())
    assert report["usage"][str(SILENT)] == 0.0
    assert report["pruned_layers"] == [SILENT] and report["kept_global_layers"] == [0, 2]
    # per token and slot 256 bytes; before: 3 x (1000 + 3), after: one global slot fewer
    assert report["kv_bytes"]["before"] == 256 * (3 * 1000 + 3 * 3)
    assert report["kv_bytes"]["after"] == 256 * (2 * 1000 + 3 * 3)
    assert AutoModelForCausalLM.from_pretrained(out).config.l2a_global_layers == [0, 2]
    assert "pruned" in capsys.readouterr().out


@pytest.mark.parametrize("family", ["qwen3"])
def test_cli_refuses_invalid_utf8_and_samples_past_the_context(saved, tmp_path_factory, capsys):
    """Bad bytes would calibrate the router on replacement characters; samples longer than
    the model's positions measure usage the model never sees."""
    from transformers import AutoConfig

    data = tmp_path_factory.mktemp("calib") / "calib.txt"
    data.write_bytes(b"The number is 12345. " * 200 + b"\xff\xfe and more")
    out = tmp_path_factory.mktemp("o") / "pruned"
    assert main(["--model", str(saved), "--out", str(out), "--text-file", str(data),
                 "--keep", "1", "--seq-len", "64"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"train.prune: error: --text-file: {data}: not UTF-8 text (invalid byte at offset 4200)"]
    context = AutoConfig.from_pretrained(saved).max_position_embeddings
    assert main(["--model", str(saved), "--out", str(out), "--haystack", "--keep", "1",
                 "--seq-len", str(context + 1)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"train.prune: error: --seq-len: {context + 1} is above the model's context "
        f"(max_position_embeddings {context})"]
    assert not out.exists()


def _prepared(tmp_path, seq_len, tokenizer):
    from train.data import DataConfig, prepare_data

    src = tmp_path / "long.jsonl"
    src.write_text("".join(json.dumps({"text": "words " * 400}) + "\n" for _ in range(8)))
    cfg = DataConfig.from_dict(
        dict(seq_len=seq_len, sources=[{"path": str(src)}], cache_dir=str(tmp_path / "cache"))
    )
    return prepare_data(cfg, tokenizer, tmp_path / f"prepared-{seq_len}-{len(tokenizer)}",
                        verbose=False).path


@pytest.mark.parametrize("family", ["qwen3"])
def test_cli_refuses_prepared_data_the_model_cannot_see(saved, tmp_path, capsys):
    """--data brings its own row length and tokenizer: rows past the model's positions or
    ids past its vocabulary used to calibrate (exit 0), and a --seq-len beside it was
    silently ignored."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(saved)
    context, vocab = config.max_position_embeddings, config.vocab_size
    out = tmp_path / "pruned"
    prune = ["--model", str(saved), "--out", str(out), "--keep", "1", "--num-samples", "1"]
    long_rows = _prepared(tmp_path, context + 1, build_byte_tokenizer())
    assert main([*prune, "--data", str(long_rows)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"train.prune: error: --data: {long_rows}: rows of {context + 1} tokens, above the "
        f"model's context (max_position_embeddings {context}); prepare it with data.seq_len "
        f"<= {context}"]
    short_rows = _prepared(tmp_path, 64, build_byte_tokenizer())
    assert main([*prune, "--data", str(short_rows), "--seq-len", "32"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "train.prune: error: --seq-len: --data has rows of 64 tokens of its own, got 32 "
        "(drop --seq-len)"]
    wide = build_byte_tokenizer()
    wide.add_tokens([f"<extra_{i}>" for i in range(vocab + 1 - len(wide))])
    wide_ids = _prepared(tmp_path, 64, wide)
    assert main([*prune, "--data", str(wide_ids)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"train.prune: error: --data: {wide_ids}: prepared with a tokenizer of {vocab + 1} "
        f"tokens, more than the model's vocabulary ({vocab})"]
    assert not out.exists()
    assert main([*prune, "--data", str(short_rows)]) == 0  # the same data at a length it sees
    assert json.loads((out / "prune_report.json").read_text())["calibration"]["seq_len"] == 64


@pytest.mark.parametrize("family", ["qwen3"])
def test_cli_names_the_line_of_a_bad_jsonl_record(saved, tmp_path, capsys):
    calib = tmp_path / "calib.jsonl"
    calib.write_text('{"text": "fine words"}\n\n{"text": 5}\n')
    out = tmp_path / "pruned"
    assert main(["--model", str(saved), "--out", str(out), "--text-file", str(calib),
                 "--keep", "1", "--seq-len", "4"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"train.prune: error: --text-file: {calib}:3: field 'text' is int, expected a string"]
    assert not out.exists()


@pytest.mark.parametrize("family", ["qwen3"])
@pytest.mark.parametrize(
    "args, message",
    [
        (["--haystack", "--threshold", "1.5"], "--threshold: must be in [0, 1], got 1.5"),
        (["--haystack", "--keep-fraction", "-0.1"], "--keep-fraction: must be in [0, 1]"),
        (["--haystack", "--keep", "9"], "--keep: must be in [0, 3]"),
        (["--keep-layers", "0,7"], "--keep-layers: [7] are not layers with a global branch"),
        (["--threshold", "0.1"], "need calibration data"),
        (["--haystack"], "exactly one of"),
        (["--text-file", "/nonexistent.txt", "--keep", "1"], "no such file"),
        (["--text-file", "/", "--keep", "1"], "--text-file: /: not a file"),
    ],
)
def test_cli_bad_input(saved, tmp_path, capsys, args, message):
    out = tmp_path / "pruned"
    assert main(["--model", str(saved), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary directory left


def test_cli_rejects_a_model_that_is_not_l2a(make_base, tmp_path, capsys):
    base = make_base("qwen3")
    base.save_pretrained(tmp_path / "base")
    assert (
        main(
            ["--model", str(tmp_path / "base"), "--out", str(tmp_path / "o"), "--keep-layers", "0"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "not an L2A model" in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("family", ["qwen3"])
def test_cli_on_prepared_data_and_a_text_file(saved, tmp_path):
    from train.data import DataConfig, prepare_data

    src = tmp_path / "docs.jsonl"
    src.write_text(
        "".join(
            json.dumps({"text": f"document {i}: " + "some words " * (5 + i)}) + "\n"
            for i in range(30)
        )
    )
    cfg = DataConfig.from_dict(
        dict(seq_len=64, sources=[{"path": str(src)}], cache_dir=str(tmp_path / "cache"))
    )
    prepared = prepare_data(cfg, build_byte_tokenizer(), tmp_path / "prepared", verbose=False)
    for name, source in (
        ("a", ["--data", str(prepared.path)]),
        ("b", ["--text-file", str(src), "--seq-len", "64"]),
    ):
        out = tmp_path / name
        assert (
            main(
                [
                    "--model",
                    str(saved),
                    "--out",
                    str(out),
                    *source,
                    "--num-samples",
                    "3",
                    "--keep",
                    "2",
                ]
            )
            == 0
        )
        report = json.loads((out / "prune_report.json").read_text())
        assert report["usage"][str(SILENT)] == 0.0 and report["pruned_layers"] == [SILENT]
