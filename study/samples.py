"""The study's per-sample records: one JSON line per evaluation sample, so that anyone can
recompute the report's tables and intervals (study.stats) from them.

    study/results/<set>/samples/<arm>-<length>-base<b>-seed<s>-pruned<f>.jsonl.gz

`<set>` is a study run's folder under study/results/ (its about.json and run records beside
samples/); a study run written straight into study/results/ keeps its records in
study/results/samples/. A file is gzip-compressed JSON lines (a study run at the design's
defaults writes 120 evaluations x 2,000 lines, about 90 MB as plain text and 5 MB
compressed), written reproducibly: no time stamp or file name in the gzip header, so
writing the same records again gives the same bytes (with the same zlib) and git sees no
change. Files of older runs, plain
`.jsonl`, are read as well. Fields of a line:

- arm, train_length, eval_length, base_seed, seed (the extension seed), pruned (the
  fraction of layers made local-only; 0.0: the unpruned model), eval_seed;
- task, depth (NIAH; null otherwise), index, sample_id ("<task>/<eval length>/<depth>/<index>":
  with eval_seed it names the prompt; the same id is the same prompt for every arm of a
  (base seed, seed));
- generated (exact match scored), em (RULER's string_match_all in [0, 1]; null if not
  generated), answer_loglik (nats, sum over the gold answer's tokens), answer_tokens,
  token_acc (null when not teacher-forced);
- source: what the line was made from.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from pathlib import Path

from study.position import RESULTS_NAME

FROM_RESULTS = "python -m eval results.json"
# Older study runs kept their unpruned evaluations' results.json as logs/eval-results-*.json,
# generated samples only: their lines are derived from those, without teacher-forced scores.
FROM_LOGS = "logs/eval-results-*.json of the study run (derived afterwards; no teacher-forced scores)"


class SamplesError(ValueError):
    """A records file that cannot be read: one line naming the file and line."""


SAMPLES_SUBDIR = "samples"


def records_dir(set_dir: Path) -> Path:
    """Where the records of the study run whose results are in `set_dir` go and are read."""
    return set_dir / SAMPLES_SUBDIR


SUFFIX = ".jsonl.gz"
PLAIN_SUFFIX = ".jsonl"  # written before the records were compressed; still read
GZIP_LEVEL = 9  # the records are written once and kept: the smallest file


def length_key(train_length: int) -> str:
    return f"{train_length // 1024}k"


def file_name(arm: str, train_length: int, base_seed: int, seed: int, pruned: float) -> str:
    return f"{arm}-{length_key(train_length)}-base{base_seed}-seed{seed}-pruned{pruned:g}{SUFFIX}"


def sample_id(task: str, length: int, depth, index: int) -> str:
    return f"{task}/{length}/{'-' if depth is None else f'{float(depth):g}'}/{index}"


def records_from_results(results: dict, *, arm: str, train_length: int, base_seed: int,
                         seed: int, pruned: float, source: str = FROM_RESULTS) -> list[dict]:
    """The lines of one evaluation (a `python -m eval` results dict) of one model."""
    eval_seed = int((results.get("config") or {}).get("seed", seed))
    out = []
    for s in results.get("samples", []):
        generated = s.get("generated", True)  # results without the field generated everything
        forced = "answer_loglik" in s
        out.append({
            "arm": arm, "train_length": train_length, "eval_length": s["length"],
            "base_seed": base_seed, "seed": seed, "pruned": float(pruned), "eval_seed": eval_seed,
            "task": s["task"], "depth": s["depth"], "index": s["index"],
            "sample_id": sample_id(s["task"], s["length"], s["depth"], s["index"]),
            "generated": generated, "em": s.get("score") if generated else None,
            "answer_loglik": s["answer_loglik"] if forced else None,
            "answer_tokens": s["answer_tokens"] if forced else None,
            "token_acc": s["token_accuracy"] if forced else None, "source": source})
    return out


def write_records(path: Path, records: list[dict]) -> Path:
    """`records` as gzip-compressed JSON lines at `path` (a *.jsonl.gz), atomically: the file
    is there whole or not at all. The bytes depend on the records only: mtime 0 and no file
    name in the gzip header. A plain .jsonl of the same name (an older copy of the same
    model's records) is removed, so that a folder never holds one model's records twice."""
    if not path.name.endswith(SUFFIX):
        raise ValueError(f"{path}: per-sample records are written as *{SUFFIX}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f,
                                                 compresslevel=GZIP_LEVEL, mtime=0) as gz:
            for r in records:
                gz.write((json.dumps(r, sort_keys=True) + "\n").encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:  # a record that is not JSON, a full disk: no half-written file
        tmp.unlink(missing_ok=True)
        raise
    path.with_name(path.name.removesuffix(".gz")).unlink(missing_ok=True)
    return path


REQUIRED = ("arm", "train_length", "eval_length", "seed", "pruned", "sample_id")


def record_files(d: Path) -> list[Path]:
    """The records files in `d` (not below it), by name; none if `d` does not exist. One
    model's records both as .jsonl and as .jsonl.gz is an error: they would count twice."""
    if not d.is_dir():
        return []
    files = sorted(p for p in d.iterdir()
                   if p.name.endswith((SUFFIX, PLAIN_SUFFIX)) and p.is_file())
    names = {p.name for p in files}
    for p in files:
        if p.name.endswith(PLAIN_SUFFIX) and p.name + ".gz" in names:
            raise SamplesError(f"{p}: the same records as {p.name}.gz beside it (remove one)")
    return files


def _lines(path: Path) -> list[bytes]:
    """The lines of a records file, read to its end before any is parsed: a damaged gzip
    stream can decompress to lines that look like JSON until its checksum, at the end, says
    otherwise. One that cannot be read is a SamplesError naming the line reading stopped at."""
    lines: list[bytes] = []
    try:
        if path.name.endswith(SUFFIX):
            if path.stat().st_size == 0:  # what a copy cut short leaves; never written
                raise SamplesError(f"{path}:1: empty, not gzip")
            f = gzip.open(path, "rb")
        else:
            f = open(path, "rb")
        with f:
            lines.extend(f)
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise SamplesError(f"{path}:{len(lines) + 1}: corrupt gzip ({e})") from None
    except OSError as e:
        raise SamplesError(f"{path}: unreadable ({e.strerror or e})") from None
    return lines


def load_records(d: Path) -> list[dict]:
    """Every line of every records file in `d` (*.jsonl.gz, and *.jsonl of older runs; not
    below it); none if `d` does not exist. A file that is not gzip, cut short or with a line
    that is not a record: a SamplesError naming the file and line, and no records."""
    out = []
    for path in record_files(d):
        for i, raw in enumerate(_lines(path), 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise SamplesError(f"{path}:{i}: not UTF-8") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise SamplesError(f"{path}:{i}: not JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise SamplesError(f"{path}:{i}: not a JSON object")
            missing = [k for k in REQUIRED if k not in rec]
            if missing:
                raise SamplesError(f"{path}:{i}: no {missing[0]!r}")
            rec.setdefault("base_seed", 0)
            out.append(rec)
    return out


def derive_from_logs(set_dir: Path, out_dir: Path) -> list[Path]:
    """The lines of a study run that kept only its unpruned evaluations' results.json (as
    `logs/eval-results-<arm>-<k>k-seed<s>.json`; one base, seed 0), into `out_dir`."""
    made = []
    for p in sorted((set_dir / "logs").glob("eval-results-*.json")):
        m = RESULTS_NAME.fullmatch(p.name)
        if not m:
            continue
        train_length = int(m["k"]) * 1024
        recs = records_from_results(json.loads(p.read_text()), arm=m["arm"],
                                    train_length=train_length, base_seed=0, seed=int(m["seed"]),
                                    pruned=0.0, source=FROM_LOGS)
        if recs:
            made.append(write_records(out_dir / file_name(m["arm"], train_length, 0,
                                                          int(m["seed"]), 0.0), recs))
    return made
