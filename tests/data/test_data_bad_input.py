"""Every kind of bad input: a one-line error naming file and line, or counted and
reported under data.max_bad_records; never silently dropped; nothing half-written."""

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import data_config, write_jsonl
from tokenizers import Regex, normalizers

from train.data import DataError, build_byte_tokenizer, prepare_data

GOOD = ["first good document", "second good document"]

# (name, bad line as written, expected reason)
BAD_LINES = [
    ("corrupt", b'{"text": "unterminated', "corrupt JSON"),
    ("empty_line", b"", "empty line"),
    ("blank_line", b"   ", "empty line"),
    ("missing_field", b'{"body": "no text field here"}', "missing field 'text'"),
    ("null_field", b'{"text": null}', "field 'text' is null, expected a string"),
    ("number_field", b'{"text": 42}', "field 'text' is a number, expected a string"),
    ("empty_text", b'{"text": ""}', "empty field 'text'"),
    # A whitespace-only text tokenizes to blanks: a row of them teaches nothing.
    ("whitespace_text", b'{"text": " \\n\\t \\u3000 "}', "whitespace-only field 'text'"),
    ("not_object", b'["text"]', "not a JSON object"),
    ("non_utf8", b'{"text": "caf\xe9 latin-1"}', "non-UTF-8 bytes"),
    ("lone_surrogate", b'{"text": "bad \\ud800 half"}', "invalid Unicode"),
]


def _corpus(tmp_path, bad_line):
    # The bad record is line 3.
    return write_jsonl(
        tmp_path / "corpus.jsonl", [GOOD[0], GOOD[1], bad_line, "third good document"]
    )


@pytest.mark.parametrize("name, line, reason", BAD_LINES, ids=[b[0] for b in BAD_LINES])
def test_bad_line_is_a_one_line_error(tmp_path, cache_dir, byte_tok, name, line, reason):
    path = _corpus(tmp_path, line)
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        prepare_data(data_config(cache_dir, [{"path": path}]), byte_tok, out, verbose=False)
    msg = str(err.value)
    assert msg.startswith(f"{path}:3: {reason}"), msg
    assert "\n" not in msg
    assert not os.path.exists(out) and not any(
        p.name.startswith("out.tmp") for p in tmp_path.iterdir()
    )


@pytest.mark.parametrize("name, line, reason", BAD_LINES, ids=[b[0] for b in BAD_LINES])
def test_bad_line_counted_under_the_limit(tmp_path, cache_dir, byte_tok, name, line, reason):
    path = _corpus(tmp_path, line)
    prepared = prepare_data(
        data_config(cache_dir, [{"path": path}], max_bad_records=1),
        byte_tok,
        tmp_path / "out",
        verbose=False,
    )
    bad = prepared.stats["bad_records"]
    assert bad["count"] == 1 and bad["first"][0].startswith(f"{path}:3: {reason}")
    assert prepared.stats["sources"][0]["bad_records"] == 1
    assert prepared.stats["sources"][0]["docs_available"] == 3  # the good ones all stay
    listed = open(os.path.join(prepared.path, "bad_records.txt")).read().splitlines()
    assert listed == bad["first"]


def test_over_the_limit_fails(tmp_path, cache_dir, byte_tok):
    path = write_jsonl(tmp_path / "c.jsonl", [GOOD[0], b"{oops", b"", b'{"x": 1}', GOOD[1]])
    with pytest.raises(
        DataError,
        match=r"3 bad records, more than data.max_bad_records=2; first: .*c.jsonl:2: corrupt JSON",
    ):
        prepare_data(
            data_config(cache_dir, [{"path": path}], max_bad_records=2),
            byte_tok,
            tmp_path / "out",
            verbose=False,
        )


def test_zero_token_document(tmp_path, cache_dir):
    # A tokenizer whose normalizer deletes the letter x turns the text "xxx" into nothing.
    tok = build_byte_tokenizer()
    tok.backend_tokenizer.normalizer = normalizers.Replace(Regex(r"x"), "")
    path = write_jsonl(tmp_path / "z.jsonl", [GOOD[0], "xxx", GOOD[1]])
    with pytest.raises(DataError, match=r"z.jsonl:2: zero tokens after tokenization"):
        prepare_data(data_config(cache_dir, [{"path": path}]), tok, tmp_path / "out", verbose=False)
    prepared = prepare_data(
        data_config(cache_dir, [{"path": path}], max_bad_records=5),
        tok,
        tmp_path / "out",
        verbose=False,
    )
    assert prepared.stats["bad_records"]["reasons"] == {"zero tokens after tokenization": 1}


def test_missing_file_and_empty_glob(tmp_path, cache_dir, byte_tok):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=rf"^{missing}: no such file \(data.sources.0.path\)$"):
        prepare_data(
            data_config(cache_dir, [{"path": missing}]), byte_tok, tmp_path / "o", verbose=False
        )
    pattern = str(tmp_path / "shards" / "*.jsonl")
    with pytest.raises(DataError, match="no files match"):
        prepare_data(
            data_config(cache_dir, [{"path": pattern, "type": "jsonl"}]),
            byte_tok,
            tmp_path / "o",
            verbose=False,
        )


def test_empty_file(tmp_path, cache_dir, byte_tok):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=rf"^{path}: empty, no records"):
        prepare_data(
            data_config(cache_dir, [{"path": str(path)}]), byte_tok, tmp_path / "o", verbose=False
        )


def test_text_file_with_non_utf8(tmp_path, cache_dir, byte_tok):
    path = tmp_path / "book.txt"
    path.write_bytes(b"line one\n\nline two\nbroken \xff byte\nline four\n")
    with pytest.raises(DataError, match=rf"{path}:4: non-UTF-8 bytes"):
        prepare_data(
            data_config(cache_dir, [{"path": str(path)}]), byte_tok, tmp_path / "o", verbose=False
        )
    cfg = data_config(cache_dir, [{"path": str(path), "sample_by": "line"}], max_bad_records=1)
    prepared = prepare_data(cfg, byte_tok, tmp_path / "o", verbose=False)
    # Line numbers count the blank line that line mode skips.
    assert prepared.stats["bad_records"]["first"] == [
        f"{path}:4: non-UTF-8 bytes (byte 8 of the line)"
    ]
    assert prepared.stats["sources"][0]["docs_available"] == 3


def test_parquet_problems(tmp_path, cache_dir, byte_tok):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"content": ["a doc", None, "another"]}), good)
    with pytest.raises(DataError, match=rf"^{good}: missing field 'text' \(columns: content\)$"):
        prepare_data(
            data_config(cache_dir, [{"path": str(good)}]), byte_tok, tmp_path / "o", verbose=False
        )
    with pytest.raises(DataError, match=rf"{good}:row 2: null field 'content'"):
        prepare_data(
            data_config(cache_dir, [{"path": str(good), "text_field": "content"}]),
            byte_tok,
            tmp_path / "o",
            verbose=False,
        )
    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), numbers)
    with pytest.raises(DataError, match="field 'text' has type int64, expected a string"):
        prepare_data(
            data_config(cache_dir, [{"path": str(numbers)}]),
            byte_tok,
            tmp_path / "o",
            verbose=False,
        )
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=rf"^{corrupt}: not a readable parquet file"):
        prepare_data(
            data_config(cache_dir, [{"path": str(corrupt)}]),
            byte_tok,
            tmp_path / "o",
            verbose=False,
        )


def test_whitespace_only_documents_of_column_and_text_sources(tmp_path, cache_dir, byte_tok):
    # Column sources (parquet, the hub) and whole-file text documents: the same rule as jsonl.
    table = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["a doc", "\t \n ", "another"]}), table)
    cfg = data_config(cache_dir, [{"path": str(table)}])
    with pytest.raises(DataError, match=rf"^{table}:row 2: whitespace-only field 'text'"):
        prepare_data(cfg, byte_tok, tmp_path / "o", verbose=False)
    cfg = data_config(cache_dir, [{"path": str(table)}], max_bad_records=1)
    prepared = prepare_data(cfg, byte_tok, tmp_path / "o", verbose=False)
    assert prepared.stats["bad_records"]["reasons"] == {"whitespace-only field 'text'": 1}
    assert prepared.stats["sources"][0]["docs_available"] == 2
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\n\t\n")
    cfg = data_config(cache_dir, [{"path": str(blank), "sample_by": "document"}])
    with pytest.raises(DataError, match=rf"^{blank}:1: empty document"):
        prepare_data(cfg, byte_tok, tmp_path / "o2", verbose=False)


def test_failure_keeps_the_previous_output(tmp_path, cache_dir, byte_tok):
    path = write_jsonl(tmp_path / "c.jsonl", GOOD)
    out = tmp_path / "out"
    first = prepare_data(data_config(cache_dir, [{"path": path}]), byte_tok, out, verbose=False)
    write_jsonl(tmp_path / "c.jsonl", [*GOOD, b"{broken"])
    with pytest.raises(DataError):
        prepare_data(data_config(cache_dir, [{"path": path}]), byte_tok, out, verbose=False)
    assert sorted(os.listdir(out)) == sorted(os.listdir(first.path))
    from train.data import PreparedData

    assert PreparedData.load(out).fingerprint == first.fingerprint


def test_unreadable_prepared_dir(tmp_path):
    from train.data import PreparedData

    with pytest.raises(DataError, match="not prepared data"):
        PreparedData.load(tmp_path)


def test_line_numbers_are_exact_across_parallel_shards(tmp_path, cache_dir, byte_tok):
    lines = [f"document number {i}" for i in range(1, 3000)]
    lines[2499] = b'{"text": 1'  # line 2500, in the second of two shards
    path = write_jsonl(tmp_path / "big.jsonl", lines)
    with pytest.raises(DataError, match=r"big.jsonl:2500: corrupt JSON"):
        prepare_data(
            data_config(cache_dir, [{"path": path}], num_proc=2),
            byte_tok,
            tmp_path / "o",
            verbose=False,
        )


def test_streaming_bad_record_with_workers(tmp_path, cache_dir, byte_tok, monkeypatch):
    import train.data.sources as sources

    monkeypatch.setattr(sources, "STREAM_BATCH", 5)
    lines = [f"document {i}" for i in range(1, 40)]
    lines[26] = b"{nope"  # line 27
    path = write_jsonl(tmp_path / "s.jsonl", lines)
    cfg = data_config(cache_dir, [{"path": path, "streaming": True}], num_proc=2)
    with pytest.raises(DataError, match=r"s.jsonl:27: corrupt JSON"):
        prepare_data(cfg, byte_tok, tmp_path / "o", verbose=False)
    cfg = data_config(cache_dir, [{"path": path, "streaming": True, "max_docs": 10}], num_proc=2)
    assert (
        prepare_data(cfg, byte_tok, tmp_path / "o", verbose=False).stats["bad_records"]["count"]
        == 0
    )
