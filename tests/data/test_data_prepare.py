"""prepare_data end to end: every local source type, idempotence, caching, streaming,
parallel tokenization, the `make data` entry point."""

import os
import subprocess
import sys

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import data_config, segments, write_jsonl

from train.data import DataError, PreparedData, prepare_data
from train.data.textgen import generated_documents
from train.data.tokenizer import TextEncoder

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
DOCS = [t for _, t in generated_documents(11, 0, 60, 3, 60)]


def _documents_in(prepared, byte_tok):
    """Every document of the prepared rows (the callers' seq_len keeps documents whole)."""
    assert prepared.stats["packing"]["split_documents"] == 0
    pieces = []
    for r in range(prepared.num_sequences):
        pieces.extend(segments(prepared, r))
    text = byte_tok.decode([t for p in pieces for t in p])
    return sorted(d for d in text.split("<|endoftext|>") if d)


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("kind", ["jsonl", "text", "parquet", "arrow_files", "save_to_disk"])
def test_every_local_source_type_round_trips(tmp_path, cache_dir, byte_tok, kind, streaming):
    d = tmp_path / "corpus"
    d.mkdir()
    source = {}
    if kind == "jsonl":
        source = {"path": write_jsonl(d / "a.jsonl", DOCS, field="body"), "text_field": "body"}
    elif kind == "text":
        for i, doc in enumerate(DOCS):
            (d / f"doc{i:03d}.txt").write_text(doc)
        source = {"path": str(d)}  # a directory of text files, one document per file
    elif kind == "parquet":
        pq.write_table(pa.table({"text": DOCS[:30]}), d / "part0.parquet")
        pq.write_table(pa.table({"text": DOCS[30:]}), d / "part1.parquet")
        source = {"path": str(d / "*.parquet"), "type": "parquet"}
    elif kind == "arrow_files":
        datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(d / "saved"))
        arrow = [f for f in os.listdir(d / "saved") if f.endswith(".arrow")]
        source = {"path": str(d / "saved" / arrow[0])}
    else:
        datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(d / "saved"))
        source = {"path": str(d / "saved")}
    cfg = data_config(cache_dir, [{**source, "streaming": streaming}], seq_len=512)
    prepared = prepare_data(cfg, byte_tok, tmp_path / "out", verbose=False)
    assert _documents_in(prepared, byte_tok) == sorted(DOCS)
    assert prepared.stats["sources"][0]["docs_available"] == len(DOCS)


def test_reuse_and_refresh(tmp_path, cache_dir, byte_tok, capsys):
    path = write_jsonl(tmp_path / "a.jsonl", DOCS)
    cfg = data_config(cache_dir, [{"path": path}])
    first = prepare_data(cfg, byte_tok, tmp_path / "out")
    assert "Preparing data" in capsys.readouterr().out
    mtime = os.path.getmtime(os.path.join(first.path, "meta.json"))
    again = prepare_data(cfg, byte_tok, tmp_path / "out")
    out = capsys.readouterr().out
    assert "Reusing prepared data" in out and "sequences" in out  # statistics printed again
    assert again.fingerprint == first.fingerprint
    assert os.path.getmtime(os.path.join(first.path, "meta.json")) == mtime
    # A changed input file, seed or setting prepares again.
    write_jsonl(tmp_path / "a.jsonl", DOCS[:-1])
    changed = prepare_data(cfg, byte_tok, tmp_path / "out", verbose=False)
    assert changed.fingerprint != first.fingerprint
    rows = [changed.row(i)[0].tolist() for i in range(len(changed))]
    other_seed = prepare_data(cfg, byte_tok, tmp_path / "out", seed=1, verbose=False)
    assert other_seed.meta["seed"] == 1
    # The data itself changes with the seed (another order of the same documents), not
    # only its metadata.
    other_rows = [other_seed.row(i)[0].tolist() for i in range(len(other_seed))]
    assert other_rows != rows
    specials = {changed.pad_token_id, changed.eos_token_id}
    tokens = lambda rs: sorted(t for r in rs for t in r if t not in specials)  # noqa: E731
    assert tokens(other_rows) == tokens(rows)


def test_new_document_rules_prepare_again(tmp_path, cache_dir, byte_tok, monkeypatch):
    # Data prepared under older rules of what a document is (e.g. before whitespace-only
    # texts became bad records) may hold rows those rules let through: not reused.
    from train.data import pipeline

    cfg = data_config(cache_dir, [{"path": write_jsonl(tmp_path / "a.jsonl", DOCS)}])
    first = prepare_data(cfg, byte_tok, tmp_path / "out", verbose=False)
    monkeypatch.setattr(pipeline, "TOKENIZE_VERSION", "older")
    again = prepare_data(cfg, byte_tok, tmp_path / "out", verbose=False)
    assert again.fingerprint != first.fingerprint


def test_tokenization_is_cached_by_fingerprint(tmp_path, cache_dir, byte_tok, monkeypatch):
    path = write_jsonl(tmp_path / "a.jsonl", DOCS)
    prepare_data(
        data_config(cache_dir, [{"path": path}], seq_len=64),
        byte_tok,
        tmp_path / "o1",
        verbose=False,
    )
    calls = []
    real = TextEncoder.encode
    monkeypatch.setattr(
        TextEncoder, "encode", lambda self, texts: calls.append(1) or real(self, texts)
    )
    # Another packing of the same corpus reuses the tokenized cache.
    prepared = prepare_data(
        data_config(cache_dir, [{"path": path}], seq_len=96),
        byte_tok,
        tmp_path / "o2",
        verbose=False,
    )
    assert prepared.seq_len == 96 and calls == []
    # Another tokenizer does not.
    from tests_data_helpers import tiny_bpe_tokenizer

    prepare_data(
        data_config(cache_dir, [{"path": path}], seq_len=96),
        tiny_bpe_tokenizer(),
        tmp_path / "o3",
        verbose=False,
    )
    assert calls


def _rows(prepared):
    return [prepared.row(i)[0].tolist() for i in range(prepared.num_sequences)]


def test_streaming_and_parallel_give_identical_output(tmp_path, byte_tok, monkeypatch):
    import train.data.sources as sources

    monkeypatch.setattr(sources, "STREAM_BATCH", 7)  # many batches in flight
    path = write_jsonl(tmp_path / "a.jsonl", DOCS)
    base = dict(sources=[{"path": path}], seq_len=100)
    plain = prepare_data(
        data_config(str(tmp_path / "c1"), **base), byte_tok, tmp_path / "o1", verbose=False
    )
    streamed = prepare_data(
        data_config(str(tmp_path / "c2"), [{"path": path, "streaming": True}], seq_len=100),
        byte_tok,
        tmp_path / "o2",
        verbose=False,
    )
    parallel = prepare_data(
        data_config(str(tmp_path / "c3"), num_proc=2, **base),
        byte_tok,
        tmp_path / "o3",
        verbose=False,
    )
    streamed_parallel = prepare_data(
        data_config(
            str(tmp_path / "c4"), [{"path": path, "streaming": True}], seq_len=100, num_proc=2
        ),
        byte_tok,
        tmp_path / "o4",
        verbose=False,
    )
    assert _rows(plain) == _rows(streamed) == _rows(parallel) == _rows(streamed_parallel)
    assert plain.fingerprint == parallel.fingerprint  # num_proc does not change the data


def test_per_source_caps(tmp_path, cache_dir, byte_tok):
    path = write_jsonl(tmp_path / "a.jsonl", DOCS)
    for streaming in (False, True):
        cfg = data_config(
            cache_dir, [{"path": path, "max_docs": 7, "streaming": streaming}], seq_len=512
        )
        p = prepare_data(cfg, byte_tok, tmp_path / f"o{streaming}", verbose=False)
        assert p.stats["sources"][0]["docs_available"] == 7
        assert _documents_in(p, byte_tok) == sorted(DOCS[:7])


def test_make_data_entry_point(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = tmp_path / "prepared"
    cmd = [
        sys.executable,
        "-m",
        "train.data.prepare",
        "experiment=tiny",
        f"data.prepared_dir={out}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.sources.0.generated.num_docs=200",
        "data.synthetic.num_samples=100",
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "sequences x 512 tokens" in done.stdout and "padding" in done.stdout
    prepared = PreparedData.load(out)
    assert set(prepared.source_names) == {"generated_text", "synthetic"}
    # What the trainer then asks for is exactly what `make data` prepared.
    from omegaconf import OmegaConf

    from train.data import DataConfig, build_byte_tokenizer
    from train.data.prepare import compose

    cfg = compose("config", [a for a in cmd[3:] if a != "--force"])
    again = prepare_data(
        DataConfig.from_dict(OmegaConf.to_container(cfg.data, resolve=True)),
        build_byte_tokenizer(),
        seed=cfg.train.seed,
        verbose=False,
    )
    assert again.fingerprint == prepared.fingerprint
    bad = subprocess.run(
        [*cmd, "data.seq_len=0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == "error: data.seq_len: must be >= 8, got 0"


def test_hub_source_failure_is_one_line(tmp_path, cache_dir, byte_tok, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    cfg = data_config(cache_dir, [{"path": "no-such-org/no-such-dataset", "subset": "en"}])
    with pytest.raises(DataError) as err:
        prepare_data(cfg, byte_tok, tmp_path / "o", verbose=False)
    msg = str(err.value)
    assert msg.startswith(
        "data.sources.0: cannot load hub dataset no-such-org/no-such-dataset/en[train]"
    )
    assert "\n" not in msg and not os.path.exists(tmp_path / "o")
