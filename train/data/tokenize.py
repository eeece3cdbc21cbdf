"""Tokenization of record datasets (``datasets.map``, cached by fingerprint) and the
``TokenStore`` that gives the packer zero-copy access to each document's token ids."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections import deque
from dataclasses import dataclass

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from train.data.errors import BadRecordLog
from train.data.sources import LoadedSource
from train.data.tokenizer import TextEncoder

TOKENIZE_VERSION = "2"  # 2: whitespace-only texts are bad records
ZERO_TOKENS = "zero tokens after tokenization"


def _check_value(value, field: str) -> str:
    if value is None:
        return f"null field '{field}'"
    if not isinstance(value, str):
        return f"field '{field}' is {type(value).__name__}, expected a string"
    if not value:
        return f"empty field '{field}'"
    if not value.strip():  # would pack rows of blanks (or vanish as zero tokens)
        return f"whitespace-only field '{field}'"
    return ""


def tokenize_batch(
    texts: list, errors: list[str] | None, encoder: TextEncoder, field: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """-> (flat ids, per-record lengths (0 for bad records), per-record errors)."""
    errors = list(errors) if errors is not None else [""] * len(texts)
    for i, t in enumerate(texts):
        if not errors[i]:
            errors[i] = _check_value(t, field)
    ok = [i for i, e in enumerate(errors) if not e]
    values, ok_lengths = encoder.encode([texts[i] for i in ok])
    lengths = np.zeros(len(texts), dtype=np.int64)
    lengths[ok] = ok_lengths
    for i, n in zip(ok, ok_lengths.tolist()):
        if n == 0:
            errors[i] = ZERO_TOKENS
    return values, lengths, errors


def _tokenize_table(table: pa.Table, encoder: TextEncoder, field: str) -> pa.Table:
    texts = table.column("text").to_pylist()
    errors = table.column("_error").to_pylist() if "_error" in table.column_names else None
    values, lengths, errors = tokenize_batch(texts, errors, encoder, field)
    offsets = np.zeros(len(texts) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    ids = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.int32()))
    out = {"input_ids": ids, "_error": pa.array(errors, type=pa.string())}
    for keep in ("_file", "_line"):  # an arrow-format map keeps only what it returns
        if keep in table.column_names:
            out[keep] = table.column(keep)
    return pa.table(out)


def tokenize_dataset(
    src: LoadedSource,
    encoder: TextEncoder,
    tokenizer_fp: str,
    field: str,
    num_proc: int,
    batch_size: int = 1000,
) -> datasets.Dataset:
    ds = src.dataset
    if num_proc > 1:  # every worker gets work, and batches stay whole
        batch_size = max(1, min(batch_size, -(-len(ds) // num_proc)))
    fp = hashlib.sha256(
        "|".join(
            [
                src.fingerprint,
                tokenizer_fp,
                str(encoder.parse_special_tokens),
                field,
                TOKENIZE_VERSION,
            ]
        ).encode()
    ).hexdigest()[:16]
    drop = [c for c in ds.column_names if c not in ("_file", "_line")]
    out = ds.with_format("arrow").map(
        _tokenize_table,
        batched=True,
        batch_size=batch_size,
        fn_kwargs={"encoder": encoder, "field": field},
        remove_columns=drop,
        num_proc=num_proc if num_proc > 1 and len(ds) >= 2 * num_proc else None,
        new_fingerprint=fp,
        desc=f"tokenize {src.name}",
    )
    return out.with_format(None)


@dataclass
class TokenStore:
    """Token ids of a source's valid documents (without EOS), in source order."""

    name: str
    chunks: list[np.ndarray]
    chunk_of: np.ndarray  # int32 (docs,)
    start: np.ndarray  # int64 (docs,)
    lengths: np.ndarray  # int64 (docs,) tokens without EOS
    rows_read: int
    bad_records: int

    @property
    def num_docs(self) -> int:
        return len(self.lengths)

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    def tokens(self, doc: int) -> np.ndarray:
        s = self.start[doc]
        return self.chunks[self.chunk_of[doc]][s : s + self.lengths[doc]]


def _log_errors(
    errors: list[str] | np.ndarray,
    base_row: int,
    src: LoadedSource,
    files,
    lines,
    log: BadRecordLog,
) -> None:
    for i, e in enumerate(errors):
        if e:
            f = int(files[i]) if files is not None else 0
            line = int(lines[i]) if lines is not None else base_row + i + 1
            log.add(src.locate(base_row + i, f, line), e)


def _limit(lengths: np.ndarray, max_docs: int | None, max_tokens: int | None) -> int:
    """How many leading documents stay under the per-source caps."""
    n = len(lengths)
    if max_docs is not None:
        n = min(n, max_docs)
    if max_tokens is not None:
        n = min(n, int(np.searchsorted(np.cumsum(lengths[:n] + 1), max_tokens, side="left")) + 1)
    return n


def store_from_dataset(
    tokenized: datasets.Dataset,
    src: LoadedSource,
    log: BadRecordLog,
    max_docs: int | None = None,
    max_tokens: int | None = None,
) -> TokenStore:
    table = tokenized.data
    ids_col = table.column("input_ids")
    err_col = table.column("_error")
    has_loc = "_file" in tokenized.column_names
    bad = pc.not_equal(err_col, "")
    bad_rows = np.flatnonzero(bad.to_numpy(zero_copy_only=False)) if len(tokenized) else []
    if len(bad_rows):
        errs = err_col.take(pa.array(bad_rows)).to_pylist()
        files = table.column("_file").take(pa.array(bad_rows)).to_pylist() if has_loc else None
        lines = table.column("_line").take(pa.array(bad_rows)).to_pylist() if has_loc else None
        for k, row in enumerate(bad_rows.tolist()):
            line = lines[k] if has_loc else row + 1
            log.add(src.locate(row, files[k] if has_loc else 0, line), errs[k])
    chunks, chunk_of, starts, lengths = [], [], [], []
    for ci, chunk in enumerate(ids_col.chunks):
        lens = pc.list_value_length(chunk).to_numpy(zero_copy_only=False).astype(np.int64)
        offs = np.zeros(len(lens), dtype=np.int64)
        np.cumsum(lens[:-1], out=offs[1:])
        keep = lens > 0  # bad records have no tokens
        chunks.append(chunk.flatten().to_numpy())
        chunk_of.append(np.full(int(keep.sum()), ci, dtype=np.int32))
        starts.append(offs[keep])
        lengths.append(lens[keep])

    def cat(xs, dt):
        return np.concatenate(xs) if xs else np.zeros(0, dtype=dt)

    lengths_all = cat(lengths, np.int64)
    n = _limit(lengths_all, max_docs, max_tokens)
    return TokenStore(
        src.name,
        chunks,
        cat(chunk_of, np.int32)[:n],
        cat(starts, np.int64)[:n],
        lengths_all[:n],
        len(tokenized),
        len(bad_rows),
    )


_WORKER: dict = {}


def _worker_init(encoder: TextEncoder, field: str) -> None:
    _WORKER["encoder"], _WORKER["field"] = encoder, field


def _worker_tokenize(batch: dict):
    return batch, tokenize_batch(
        batch["text"], batch.get("_error"), _WORKER["encoder"], _WORKER["field"]
    )


def _tokenized_batches(src: LoadedSource, encoder: TextEncoder, field: str, num_proc: int):
    """(batch, tokenize_batch result) in stream order; ``num_proc`` workers tokenize while
    the stream is read, with a bounded number of batches in flight (the stream may be huge)."""
    if num_proc <= 1:
        for batch in src.stream():
            yield batch, tokenize_batch(batch["text"], batch.get("_error"), encoder, field)
        return
    pool = multiprocessing.get_context("fork").Pool(num_proc, _worker_init, (encoder, field))
    try:
        pending: deque = deque()
        for batch in src.stream():
            pending.append(pool.apply_async(_worker_tokenize, (batch,)))
            if len(pending) >= 2 * num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
    finally:
        pool.terminate()  # also when the caller stops early at a cap
        pool.join()


def store_from_stream(
    src: LoadedSource,
    encoder: TextEncoder,
    field: str,
    log: BadRecordLog,
    tmp_dir: str,
    max_docs: int | None,
    max_tokens: int | None,
    num_proc: int = 1,
) -> TokenStore:
    """Tokenize a streaming source into a flat file under ``tmp_dir``, up to the caps."""
    path = os.path.join(tmp_dir, f"stream-{src.index}.int32")
    lengths: list[np.ndarray] = []
    rows = docs = tokens = bad = 0
    batches = _tokenized_batches(src, encoder, field, num_proc)
    try:
        with open(path, "wb") as fh:
            for batch, (values, lens, errors) in batches:
                texts = batch["text"]
                before = log.count
                _log_errors(errors, rows, src, batch.get("_file"), batch.get("_line"), log)
                bad += log.count - before
                rows += len(texts)
                lens = lens[lens > 0]
                take = _limit(
                    lens,
                    None if max_docs is None else max_docs - docs,
                    None if max_tokens is None else max_tokens - tokens,
                )
                fh.write(values[: int(lens[:take].sum())].astype(np.int32).tobytes())
                lengths.append(lens[:take])
                docs += take
                tokens += int(lens[:take].sum()) + take
                if (
                    take < len(lens)
                    or (max_docs is not None and docs >= max_docs)
                    or (max_tokens is not None and tokens >= max_tokens)
                ):
                    break
    finally:
        batches.close()  # stops the workers, also on errors and early stops
    lengths_all = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    flat = (
        np.memmap(path, dtype=np.int32, mode="r")
        if os.path.getsize(path)
        else np.zeros(0, dtype=np.int32)
    )
    starts = np.zeros(len(lengths_all), dtype=np.int64)
    np.cumsum(lengths_all[:-1], out=starts[1:])
    return TokenStore(
        src.name, [flat], np.zeros(len(lengths_all), dtype=np.int32), starts, lengths_all, rows, bad
    )
