"""study.samples: the per-sample lines of an evaluation (generated and teacher-forced-only
samples, results from before the teacher-forced scores); the files, gzip-compressed JSON
lines that read back as written, with the same bytes for the same records, written whole
or not at all, beside the plain .jsonl of older runs; a bad records file (not gzip, cut
short, a bad line) as one line naming file and line; the lines derived from an older run's
kept results.json."""

from __future__ import annotations

import gzip
import json
import time

import pytest

from study import steps
from study.samples import (
    FROM_LOGS,
    SamplesError,
    derive_from_logs,
    file_name,
    load_records,
    records_from_results,
    write_records,
)

RESULTS = {"config": {"seed": 3}, "samples": [
    {"task": "niah_single", "length": 2048, "depth": 0.5, "index": 0, "generated": True,
     "score": 1.0, "answer_loglik": -0.5, "answer_tokens": 9, "token_accuracy": 1.0},
    {"task": "variable_tracking", "length": 2048, "depth": None, "index": 4, "generated": False,
     "score": None, "answer_loglik": -20.0, "answer_tokens": 30, "token_accuracy": 0.4},
    {"task": "niah_multikey", "length": 8192, "depth": 0.5, "index": 0, "score": 0.5}]}


def test_one_line_per_sample_with_its_model_and_prompt():
    lines = records_from_results(RESULTS, arm="l2a_s08", train_length=16384, base_seed=1,
                                 seed=2, pruned=0.25)
    common = {"arm": "l2a_s08", "train_length": 16384, "base_seed": 1, "seed": 2,
              "pruned": 0.25, "eval_seed": 3, "source": "python -m eval results.json"}
    assert lines == [
        {**common, "eval_length": 2048, "task": "niah_single", "depth": 0.5, "index": 0,
         "sample_id": "niah_single/2048/0.5/0", "generated": True, "em": 1.0,
         "answer_loglik": -0.5, "answer_tokens": 9, "token_acc": 1.0},
        {**common, "eval_length": 2048, "task": "variable_tracking", "depth": None, "index": 4,
         "sample_id": "variable_tracking/2048/-/4", "generated": False, "em": None,
         "answer_loglik": -20.0, "answer_tokens": 30, "token_acc": 0.4},
        # results from before eval.teacher_forced: generated, no teacher-forced scores
        {**common, "eval_length": 8192, "task": "niah_multikey", "depth": 0.5, "index": 0,
         "sample_id": "niah_multikey/8192/0.5/0", "generated": True, "em": 0.5,
         "answer_loglik": None, "answer_tokens": None, "token_acc": None}]
    assert file_name("l2a_s08", 16384, 1, 2, 0.25) == "l2a_s08-16k-base1-seed2-pruned0.25.jsonl.gz"


def test_a_bad_plain_records_file_is_one_line(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"arm": "dense"}\n')
    with pytest.raises(SamplesError, match=r"a\.jsonl:1: no 'train_length'$"):
        load_records(tmp_path)
    (tmp_path / "a.jsonl").write_text("\n{oops\n")
    with pytest.raises(SamplesError, match=r"a\.jsonl:2: not JSON"):
        load_records(tmp_path)
    assert load_records(tmp_path / "absent") == []


def test_report_cli_error_on_bad_records_is_one_line(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "run-dense-16k-seed0.json").write_text(json.dumps(
        {"arm": "dense", "train_length": 16384, "seed": 0, "train": {}, "evals": {}}))
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "x.jsonl").write_text("nope\n")
    rc = steps.main(["report", "--results", str(tmp_path / "results"), "--samples-dir",
                     str(tmp_path / "samples"), "--out", str(tmp_path / "RESULTS.md")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: ") and "x.jsonl:1: not JSON" in err[0]
    assert not (tmp_path / "RESULTS.md").exists()


def test_derived_from_an_older_runs_logs(tmp_path):
    logs = tmp_path / "run" / "logs"
    logs.mkdir(parents=True)
    (logs / "eval-results-l2a_s09-8k-seed1.json").write_text(json.dumps(RESULTS))
    (logs / "eval-dense-8k-seed1.log").write_text("not a results file")
    [made] = derive_from_logs(tmp_path / "run", tmp_path / "out")
    assert made.name == "l2a_s09-8k-base0-seed1-pruned0.jsonl.gz"
    lines = load_records(tmp_path / "out")
    assert [(x["arm"], x["train_length"], x["seed"], x["base_seed"], x["pruned"]) for x in lines] \
        == [("l2a_s09", 8192, 1, 0, 0.0)] * 3
    assert {x["source"] for x in lines} == {FROM_LOGS}


def test_derive_cli_writes_into_the_runs_samples_folder(tmp_path, capsys):
    (tmp_path / "run" / "logs").mkdir(parents=True)
    (tmp_path / "run" / "logs" / "eval-results-dense-16k-seed0.json").write_text(json.dumps(RESULTS))
    assert steps.main(["derive-samples", "--results", str(tmp_path / "run")]) == 0
    assert [x["arm"] for x in load_records(tmp_path / "run" / "samples")] == ["dense"] * 3
    assert capsys.readouterr().out == f"derive-samples: 1 files in {tmp_path / 'run' / 'samples'}\n"


def test_derive_cli_without_results_is_one_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    rc = steps.main(["derive-samples", "--results", str(tmp_path / "run"),
                     "--samples-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "no eval-results-*.json" in err[0]
    assert not (tmp_path / "out").exists()


# Two records as a study writes them: floats as an evaluation gives them (float32 sums and
# means as Python floats), nulls, a text field with a character outside ASCII.
RECORDS = records_from_results(RESULTS, arm="dense", train_length=8192, base_seed=1, seed=0,
                               pruned=0.0)[:2]
RECORDS[0]["answer_loglik"] = -3.2841415405273438
RECORDS[1]["source"] = "résumé of a run"


def test_written_records_read_back_the_same(tmp_path):
    path = write_records(tmp_path / "s" / file_name("dense", 8192, 1, 0, 0.0), RECORDS)
    assert path.name.endswith(".jsonl.gz") and load_records(tmp_path / "s") == RECORDS
    with gzip.open(path, "rt", encoding="utf-8") as f:  # what zcat shows: one JSON per line
        assert [json.loads(line) for line in f] == RECORDS
    assert [p.name for p in (tmp_path / "s").iterdir()] == [path.name]  # no temporary left


def test_the_same_records_give_the_same_bytes(tmp_path, monkeypatch):
    # Written at two different times to two different names: byte for byte the same file,
    # so that rewriting a run's records is no change to git.
    a = write_records(tmp_path / "a" / "x.jsonl.gz", RECORDS)
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)
    b = write_records(tmp_path / "b" / "other-name.jsonl.gz", RECORDS)
    assert a.read_bytes() == b.read_bytes()
    # RFC 1952: ID1 ID2 CM FLG MTIME(4, little-endian): deflate, no flags (no file name
    # stored), modification time 0
    head = a.read_bytes()[:8]
    assert head[:3] == b"\x1f\x8b\x08" and head[3] == 0 and head[4:8] == b"\0\0\0\0"


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = write_records(tmp_path / file_name("dense", 8192, 1, 0, 0.0), RECORDS)
    before = path.read_bytes()
    with pytest.raises(TypeError):  # a set is not JSON: fails after the first line
        write_records(path, [RECORDS[0], {**RECORDS[1], "em": {1}}])
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]
    with pytest.raises(TypeError):
        write_records(tmp_path / "new.jsonl.gz", [RECORDS[0], {"em": {1}}])
    assert not (tmp_path / "new.jsonl.gz").exists()


def test_plain_jsonl_of_older_runs_is_read_beside_gzip(tmp_path):
    old = {**RECORDS[0], "arm": "l2a"}
    del old["base_seed"]  # the oldest records have no base seed: base 0
    (tmp_path / "l2a-8k-base0-seed0-pruned0.jsonl").write_text(json.dumps(old) + "\n")
    write_records(tmp_path / file_name("dense", 8192, 1, 0, 0.0), RECORDS)
    assert load_records(tmp_path) == [*RECORDS, {**old, "base_seed": 0}]  # by file name


def test_one_models_records_twice_is_an_error_and_a_rewrite_replaces_the_plain_file(tmp_path):
    name = file_name("dense", 8192, 1, 0, 0.0)
    plain = tmp_path / name.removesuffix(".gz")
    plain.write_text(json.dumps(RECORDS[0]) + "\n")
    (tmp_path / name).write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(SamplesError, match=r"pruned0\.jsonl: the same records as .*\.jsonl\.gz"):
        load_records(tmp_path)
    write_records(tmp_path / name, RECORDS)  # the model's records written anew
    assert not plain.exists() and load_records(tmp_path) == RECORDS


def _gz(tmp_path, data: bytes):
    (tmp_path / "x.jsonl.gz").write_bytes(data)


def _one_line_error(tmp_path) -> str:
    with pytest.raises(SamplesError) as e:
        load_records(tmp_path)
    assert "\n" not in str(e.value) and str(e.value).startswith(str(tmp_path / "x.jsonl.gz:"))
    return str(e.value)


def _many_lines() -> bytes:
    # varied lines (a sample id per line), so that the compressed stream is long
    rec = RECORDS[0]
    return "".join(json.dumps({**rec, "index": i, "answer_loglik": -i / 7}) + "\n"
                   for i in range(3000)).encode()


def test_a_file_that_is_not_gzip_is_one_line(tmp_path):
    _gz(tmp_path, json.dumps(RECORDS[0]).encode() + b"\n")  # plain text under a .gz name
    assert ":1: corrupt gzip (" in _one_line_error(tmp_path)
    _gz(tmp_path, b"")  # a copy cut short before its first byte
    assert _one_line_error(tmp_path).endswith("x.jsonl.gz:1: empty, not gzip")


def test_a_gzip_cut_short_or_damaged_is_one_line(tmp_path):
    data = gzip.compress(_many_lines())
    _gz(tmp_path, data[: len(data) // 2])  # cut short: the stream has no end
    msg = _one_line_error(tmp_path)
    line = int(msg.split(":")[1])
    assert "corrupt gzip (" in msg and 1 < line < 3000  # the lines before it read
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0xFF  # one byte of the deflate stream
    _gz(tmp_path, bytes(damaged))
    assert "corrupt gzip (" in _one_line_error(tmp_path)
    damaged = bytearray(data)
    damaged[-8] ^= 0x01  # the CRC-32 of the trailer: every line decompresses, the check fails
    _gz(tmp_path, bytes(damaged))
    assert "corrupt gzip (" in _one_line_error(tmp_path)


@pytest.mark.parametrize("line, message", [
    (b"{oops", "x.jsonl.gz:2: not JSON"),
    (b"[1, 2]", "x.jsonl.gz:2: not a JSON object"),
    (b'{"arm": "dense"}', "x.jsonl.gz:2: no 'train_length'"),
    (b"\xff\xfe", "x.jsonl.gz:2: not UTF-8"),
])
def test_a_bad_line_in_a_gzip_is_one_line(tmp_path, line, message):
    _gz(tmp_path, gzip.compress(json.dumps(RECORDS[0]).encode() + b"\n" + line + b"\n"))
    assert message in _one_line_error(tmp_path)


def test_report_cli_error_on_a_corrupt_gzip_in_a_runs_folder_is_one_line(tmp_path, capsys):
    run = tmp_path / "results" / "my-run"
    run.mkdir(parents=True)
    (run / "run-dense-16k-seed0.json").write_text(json.dumps(
        {"arm": "dense", "train_length": 16384, "seed": 0, "train": {}, "evals": {}}))
    (run / "samples").mkdir()
    (run / "samples" / "dense-16k-base0-seed0-pruned0.jsonl.gz").write_bytes(b"\x1f\x8b junk")
    rc = steps.main(["report", "--results", str(tmp_path / "results"),
                     "--out", str(tmp_path / "RESULTS.md")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: ")
    assert "my-run/samples/dense-16k-base0-seed0-pruned0.jsonl.gz:1: corrupt gzip" in err[0]
    assert not (tmp_path / "RESULTS.md").exists()
