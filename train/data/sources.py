"""Loading the configured sources into record datasets.

A record dataset has a ``text`` column and, for sources read line by line, ``_error``
(empty when the record is fine), ``_file`` and ``_line``. Non-streaming sources become
cached ``datasets.Dataset``s keyed by a fingerprint of their inputs; streaming sources
are iterated batch by batch and never materialised as text.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from l2a.errors import first_line
from train.data import file_corpus, readers
from train.data.config import DataConfig, SourceConfig, SyntheticConfig
from train.data.errors import DataError
from train.data.synthetic import synthetic_documents
from train.data.textgen import generated_documents

READER_VERSION = "1"
STREAM_BATCH = 1000
_FEATURES = datasets.Features({k: datasets.Value(v) for k, v in readers.RECORD_FEATURES.items()})
_SYNTH_FEATURES = datasets.Features(
    {**_FEATURES, "task": datasets.Value("string"), "answer": datasets.Value("string")}
)


def _hash(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class LoadedSource:
    """Records of one source: a cached ``Dataset`` or, when streaming, a batch iterator."""

    name: str
    index: int
    fingerprint: str
    locate: Callable[[int, int, int], str]  # (row, _file, _line) -> "file:line"
    dataset: datasets.Dataset | None = None
    stream: Callable[[], Iterator[dict]] | None = None  # batches: {"text": [...], ...}


def _from_generator(gen, gen_kwargs, features, fingerprint, cfg: DataConfig) -> datasets.Dataset:
    num_shards = max(len(v) for v in gen_kwargs.values() if isinstance(v, list))
    return datasets.Dataset.from_generator(
        gen,
        features=features,
        gen_kwargs=gen_kwargs,
        cache_dir=cfg.cache_dir,
        num_proc=min(cfg.num_proc, num_shards) if cfg.num_proc > 1 else None,
        fingerprint=fingerprint,
    )


def _gen_jsonl(shards, files, text_field):
    yield from readers.read_jsonl(list(files), shards, text_field)


def _gen_text(shards, files, sample_by):
    yield from readers.read_text(list(files), shards, sample_by)


def _gen_generated(ranges, seed, min_words, max_words):
    for start, stop in ranges:
        for index, text in generated_documents(seed, start, stop, min_words, max_words):
            yield {"text": text, "_error": "", "_file": 0, "_line": index}


def _gen_synthetic(ranges, tasks, min_tokens, max_tokens, tokenizer, seed):
    for start, stop in ranges:
        for s in synthetic_documents(
            list(tasks), min_tokens, max_tokens, tokenizer, seed, start, stop
        ):
            yield {
                "text": s.text,
                "_error": "",
                "_file": 0,
                "_line": s.index,
                "task": s.task,
                "answer": s.answer,
            }


def _ranges(n: int, parts: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, parts + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _batched(rows: Iterator[dict], size: int | None = None) -> Iterator[dict]:
    size = size or STREAM_BATCH
    batch: dict[str, list] = {}
    for row in rows:
        for k, v in row.items():
            batch.setdefault(k, []).append(v)
        if len(batch["text"]) >= size:
            yield batch
            batch = {}
    if batch:
        yield batch


def load_source(src: SourceConfig, index: int, cfg: DataConfig, seed: int) -> LoadedSource:
    where = f"data.sources.{index}.path"
    if src.type == "generated":
        return _load_generated(src, index, cfg, seed)
    if src.type == "files":
        return _load_files(src, index, cfg, where)
    if src.type in ("jsonl", "text"):
        return _load_lines(src, index, cfg, where)
    if src.type == "parquet":
        return _load_parquet(src, index, cfg, where)
    if src.type == "arrow":
        return _load_arrow(src, index, cfg, where)
    return _load_hub(src, index, cfg)


def load_synthetic(
    syn: SyntheticConfig, index: int, cfg: DataConfig, tokenizer, tokenizer_fp: str, seed: int
) -> LoadedSource:
    fp = _hash("synthetic", READER_VERSION, syn.to_dict(), tokenizer_fp, seed)
    ranges = _ranges(syn.num_samples, max(1, cfg.num_proc) * 4)
    ds = _from_generator(
        _gen_synthetic,
        {
            "ranges": ranges,
            "tasks": tuple(syn.tasks),
            "min_tokens": syn.min_tokens,
            "max_tokens": syn.max_tokens,
            "tokenizer": tokenizer,
            "seed": seed,
        },
        _SYNTH_FEATURES,
        fp,
        cfg,
    )
    return LoadedSource("synthetic", index, fp, lambda row, f, line: f"synthetic sample {line}", ds)


def _load_generated(src: SourceConfig, index: int, cfg: DataConfig, seed: int) -> LoadedSource:
    g = src.generated
    fp = _hash("generated", READER_VERSION, g.to_dict(), src.name, seed)
    ds = _from_generator(
        _gen_generated,
        {
            "ranges": _ranges(g.num_docs, max(1, cfg.num_proc) * 4),
            "seed": _hash(seed, src.name),
            "min_words": g.min_words,
            "max_words": g.max_words,
        },
        _FEATURES,
        fp,
        cfg,
    )
    return LoadedSource(src.name, index, fp, lambda row, f, line: f"{src.name} document {line}", ds)


def _gen_files(ranges, files):
    for start, stop in ranges:
        yield from file_corpus.read_documents(list(files), start, stop)


def _load_files(src: SourceConfig, index: int, cfg: DataConfig, where: str) -> LoadedSource:
    sel = file_corpus.select_files(src.path, src.files, src.split, where)
    fp = _hash("files", READER_VERSION, sel.manifest(), src.files.to_dict(), src.split)
    ds = _from_generator(
        _gen_files,
        {"ranges": _ranges(len(sel.files), max(1, cfg.num_proc) * 4), "files": tuple(sel.files)},
        _FEATURES,
        fp,
        cfg,
    )
    return LoadedSource(src.name, index, fp, lambda row, f, line: sel.files[f], ds)


def _load_lines(src: SourceConfig, index: int, cfg: DataConfig, where: str) -> LoadedSource:
    files = readers.resolve_files(src.path, src.type, where)
    if all(os.path.getsize(f) == 0 for f in files):
        raise DataError(f"{src.path}: empty, no records ({where})")
    split = src.type == "jsonl" or src.sample_by == "line"
    shards = readers.plan_shards(files, split_files=split, num_proc=cfg.num_proc)
    if src.type == "jsonl":
        gen, extra = _gen_jsonl, {"text_field": src.text_field}
    else:
        gen, extra = _gen_text, {"sample_by": src.sample_by}
    fp = _hash(src.type, READER_VERSION, readers.file_signature(files), extra, shards)

    def locate(row, f, line):
        return f"{files[f]}:{line}"

    if src.streaming:

        def stream():
            yield from _batched(gen(shards, tuple(files), *extra.values()))

        return LoadedSource(src.name, index, fp, locate, stream=stream)
    ds = _from_generator(
        gen, {"shards": shards, "files": tuple(files), **extra}, _FEATURES, fp, cfg
    )
    return LoadedSource(src.name, index, fp, locate, ds)


def _check_column(schema_names, schema_type, field: str, place: str) -> None:
    if field not in schema_names:
        raise DataError(
            f"{place}: missing field '{field}' (columns: {', '.join(schema_names) or 'none'})"
        )
    if schema_type is not None and not (
        pa.types.is_string(schema_type) or pa.types.is_large_string(schema_type)
    ):
        raise DataError(f"{place}: field '{field}' has type {schema_type}, expected a string")


def _row_locator(names: list[str], counts: list[int], unit: str = "row"):
    bounds = np.cumsum([0, *counts])

    def locate(row, f, line):
        i = int(np.searchsorted(bounds, row, side="right") - 1)
        return f"{names[i]}:{unit} {row - bounds[i] + 1}"

    return locate


def _text_only(ds, field: str):
    ds = ds.select_columns([field])
    return ds.rename_column(field, "text") if field != "text" else ds


def _load_parquet(src: SourceConfig, index: int, cfg: DataConfig, where: str) -> LoadedSource:
    files = readers.resolve_files(src.path, "parquet", where)
    counts = []
    for f in files:
        try:
            meta = pq.ParquetFile(f)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{f}: not a readable parquet file ({first_line(err)})") from None
        schema = meta.schema_arrow
        _check_column(
            schema.names,
            schema.field(src.text_field).type if src.text_field in schema.names else None,
            src.text_field,
            f,
        )
        counts.append(meta.metadata.num_rows)
    fp = _hash("parquet", READER_VERSION, readers.file_signature(files), src.text_field)
    locate = _row_locator(files, counts)
    try:
        if src.streaming:
            ids = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
            return LoadedSource(
                src.name, index, fp, locate, stream=lambda: _iter_column(ids, src.text_field)
            )
        ds = datasets.load_dataset(
            "parquet", data_files=files, split="train", cache_dir=cfg.cache_dir
        )
    except (pa.ArrowException, OSError, ValueError) as err:
        raise DataError(f"{src.path}: cannot read parquet ({first_line(err)}) ({where})") from None
    return LoadedSource(src.name, index, fp, locate, _text_only(ds, src.text_field))


def _load_arrow(src: SourceConfig, index: int, cfg: DataConfig, where: str) -> LoadedSource:
    try:
        saved = ("state.json", "dataset_dict.json")  # a `save_to_disk` directory
        if os.path.isdir(src.path) and any(
            os.path.exists(os.path.join(src.path, f)) for f in saved
        ):
            ds = datasets.load_from_disk(src.path)
            if isinstance(ds, datasets.DatasetDict):
                if src.split not in ds:
                    raise DataError(
                        f"{src.path}: no split '{src.split}' (splits: {', '.join(ds)}) "
                        f"(data.sources.{index}.split)"
                    )
                ds = ds[src.split]
            files, counts = [src.path], [len(ds)]
        else:
            files = readers.resolve_files(src.path, "arrow", where)
            ds = datasets.load_dataset(
                "arrow", data_files=files, split="train", cache_dir=cfg.cache_dir
            )
            counts = [len(ds)] if len(files) == 1 else _arrow_counts(files)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{src.path}: no such file ({where})") from None
    except (pa.ArrowException, OSError, ValueError) as err:
        raise DataError(
            f"{src.path}: cannot read arrow data ({first_line(err)}) ({where})"
        ) from None
    _check_column(
        ds.column_names,
        ds.data.schema.field(src.text_field).type if src.text_field in ds.column_names else None,
        src.text_field,
        src.path,
    )
    fp = _hash("arrow", READER_VERSION, ds._fingerprint, src.text_field)
    locate = _row_locator(files, counts)
    if src.streaming:
        ids = ds.to_iterable_dataset()
        return LoadedSource(
            src.name, index, fp, locate, stream=lambda: _iter_column(ids, src.text_field)
        )
    return LoadedSource(src.name, index, fp, locate, _text_only(ds, src.text_field))


def _arrow_counts(files: list[str]) -> list[int]:
    counts = []
    for f in files:
        with pa.memory_map(f) as mm:
            counts.append(pa.ipc.open_stream(mm).read_all().num_rows)
    return counts


def _load_hub(src: SourceConfig, index: int, cfg: DataConfig) -> LoadedSource:
    place = f"{src.path}" + (f"/{src.subset}" if src.subset else "") + f"[{src.split}]"
    try:
        ds = datasets.load_dataset(
            src.path,
            name=src.subset,
            data_dir=src.data_dir,
            split=src.split,
            revision=src.revision,
            streaming=src.streaming,
            cache_dir=cfg.cache_dir,
        )
    except Exception as err:  # noqa: BLE001 - hub errors come in many types; all end here
        raise DataError(
            f"data.sources.{index}: cannot load hub dataset {place} ({first_line(err)})"
        ) from None
    features = ds.features
    if features is not None:
        names = list(features)
        ftype = None
        if src.text_field in features and isinstance(features[src.text_field], datasets.Value):
            ftype = features[src.text_field].pa_type
        _check_column(names, ftype, src.text_field, place)
    fp = _hash(
        "hub",
        READER_VERSION,
        src.path,
        src.subset,
        src.data_dir,
        src.split,
        src.revision,
        getattr(ds, "_fingerprint", None),
        src.text_field,
    )

    def locate(row, f, line):
        return f"{place} row {row + 1}"

    if src.streaming:
        return LoadedSource(
            src.name, index, fp, locate, stream=lambda: _iter_column(ds, src.text_field)
        )
    return LoadedSource(src.name, index, fp, locate, _text_only(ds, src.text_field))


def _iter_column(ids, field: str) -> Iterator[dict]:
    for batch in ids.iter(batch_size=STREAM_BATCH):
        if field not in batch:
            raise DataError(f"missing field '{field}' (columns: {', '.join(batch)})")
        yield {"text": batch[field]}
