"""``prepare_data``: sources -> tokens -> mixture -> packed rows on disk, with statistics."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time

import datasets
import numpy as np
import pyarrow as pa

from l2a.errors import writing_to
from train.data import sources as src_mod
from train.data.config import DataConfig
from train.data.dir_lock import locked_dir
from train.data.errors import BadRecordLog, ConfigError, DataError
from train.data.file_corpus import select_files
from train.data.mixture import plan_mixture, target_shares, unused_source_warnings
from train.data.packing import Packer, PackStats
from train.data.prepared import FORMAT_VERSION, PackedWriter, PreparedData, token_dtype, write_json
from train.data.readers import file_signature, resolve_files
from train.data.report import format_stats
from train.data.synthetic import min_length
from train.data.tokenize import (
    TOKENIZE_VERSION,
    TokenStore,
    store_from_dataset,
    store_from_stream,
    tokenize_dataset,
)
from train.data.tokenizer import TextEncoder, special_ids, tokenizer_fingerprint


def _source_signature(cfg: DataConfig) -> list:
    """What identifies the input data beyond the config: local files' size and mtime."""
    out = []
    for i, s in enumerate(cfg.sources):
        if s.type in ("jsonl", "text", "parquet") or (
            s.type == "arrow" and not os.path.isdir(s.path)
        ):
            out.append(file_signature(resolve_files(s.path, s.type, f"data.sources.{i}.path")))
        elif s.type == "files":
            sel = select_files(s.path, s.files, s.split, f"data.sources.{i}.path")
            out.append(sel.manifest())
        elif s.type == "arrow":
            if not os.path.exists(s.path):
                raise DataError(f"{s.path}: no such file (data.sources.{i}.path)")
            out.append(
                file_signature(
                    sorted(os.path.join(r, f) for r, _, fs in os.walk(s.path) for f in fs)
                )
            )
        else:
            out.append(None)
    return out


def data_fingerprint(cfg: DataConfig, tokenizer, seed: int) -> str:
    parts = [
        FORMAT_VERSION,
        TOKENIZE_VERSION,  # what counts as a document changes the rows
        cfg.fingerprint_dict(),
        tokenizer_fingerprint(tokenizer),
        seed,
        _source_signature(cfg),
    ]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check_synthetic(cfg: DataConfig, encoder: TextEncoder) -> None:
    syn = cfg.synthetic
    for i, task in enumerate(syn.tasks):
        need = min_length(task, encoder)
        if need > syn.max_tokens:
            raise ConfigError(
                f"data.synthetic.max_tokens: task '{task}' (data.synthetic.tasks.{i}) needs at "
                f"least {need} tokens with this tokenizer, got {syn.max_tokens}"
            )


def _load_stores(
    cfg: DataConfig,
    tokenizer,
    encoder: TextEncoder,
    tok_fp: str,
    seed: int,
    log: BadRecordLog,
    tmp: str,
    say,
) -> list[TokenStore]:
    stores = []
    names = [s.name for s in cfg.sources] + (["synthetic"] if cfg.synthetic.enabled else [])
    shares = target_shares(cfg, names)
    entries = [(i, s) for i, s in enumerate(cfg.sources)]
    if cfg.synthetic.enabled:
        entries.append((len(cfg.sources), None))
    for i, s in entries:
        t0 = time.time()
        try:
            store = _load_store(cfg, s, i, tokenizer, encoder, tok_fp, seed, log, tmp, shares)
        except pa.ArrowException as e:
            raise _unreadable_cache(cfg, s, i, e) from None
        say(
            f"  source {store.name}: {store.num_docs:,} documents, {store.num_tokens:,} tokens "
            f"({time.time() - t0:.1f} s)"
        )
        stores.append(store)
    return stores


def _load_store(cfg, s, i, tokenizer, encoder, tok_fp, seed, log, tmp, shares) -> TokenStore:
    """One source (s=None: the synthetic tasks) -> its token store."""
    if s is None:
        loaded = src_mod.load_synthetic(cfg.synthetic, i, cfg, tokenizer, tok_fp, seed)
        field, max_docs, max_tokens, streaming = "text", None, None, False
    else:
        loaded = src_mod.load_source(s, i, cfg, seed)
        field, max_docs, max_tokens, streaming = (
            s.text_field,
            s.max_docs,
            s.max_tokens,
            s.streaming,
        )
        if streaming and cfg.num_tokens is not None:
            # Read no more than this source's share of the budget (plus a margin for
            # the random rounding of the draws).
            need = int(shares[s.name] * cfg.num_tokens * 1.02) + 1
            max_tokens = need if max_tokens is None else min(max_tokens, need)
    if streaming:
        return store_from_stream(
            loaded, encoder, field, log, tmp, max_docs, max_tokens, cfg.num_proc
        )
    tokenized = tokenize_dataset(loaded, encoder, tok_fp, field, cfg.num_proc)
    return store_from_dataset(tokenized, loaded, log, max_docs, max_tokens)


def _unreadable_cache(cfg: DataConfig, s, i: int, err: BaseException) -> DataError:
    """Arrow could not read a cached dataset: name the cache, and say how to rebuild it."""
    lines = str(err).strip().splitlines()
    why = f"{type(err).__name__}: {lines[0] if lines else ''}"
    name = "synthetic" if s is None else s.name
    cache = os.path.abspath(cfg.cache_dir) if cfg.cache_dir else "the datasets cache"
    own = ("" if s is None or s.type not in ("arrow", "parquet")
           else f" or its input data.sources.{i}.path={s.path}")
    return DataError(f"data.cache_dir: cannot read source '{name}' from the datasets cache "
                     f"{cache}{own} ({why}); delete {cache} to rebuild it")


def prepare_data(
    cfg: DataConfig,
    tokenizer,
    out_dir: str | os.PathLike | None = None,
    seed: int = 0,
    *,
    force: bool = False,
    verbose: bool = True,
) -> PreparedData:
    """Tokenize, mix and pack the configured sources into ``out_dir``; print statistics.

    Idempotent: when ``out_dir`` already holds data prepared from the same config, tokenizer,
    seed and input files, it is reused. Output is written to a temporary directory and moved
    into place only when complete; on error nothing is left behind. Safe to call from every
    rank at once (a file lock lets one prepare while the others wait and reuse).
    """
    say = print if verbose else (lambda *a, **k: None)
    warn = (lambda line: print(f"warning: {line}", file=sys.stderr, flush=True)) if verbose \
        else (lambda line: None)
    if isinstance(cfg, dict):
        cfg = DataConfig.from_dict(cfg)
    if cfg.seed is not None:  # a data seed of its own lets runs with other seeds share data
        seed = cfg.seed
    out_dir = os.fspath(out_dir or cfg.prepared_dir or "")
    if not out_dir:
        raise ConfigError("data.prepared_dir: not set and no out_dir given")
    out_dir = os.path.abspath(out_dir)
    with writing_to(out_dir):  # a full disk or read-only directory: one line naming it
        os.makedirs(os.path.dirname(out_dir), exist_ok=True)
        fp = data_fingerprint(cfg, tokenizer, seed)
        with locked_dir(os.path.dirname(out_dir)):  # no lock file left behind
            _remove_interrupted(out_dir)
            if not force and os.path.exists(os.path.join(out_dir, "meta.json")):
                try:
                    existing = PreparedData.load(out_dir, cfg.validation_sequences)
                except DataError:
                    existing = None
                if existing is not None and existing.fingerprint == fp:
                    say(f"Reusing prepared data {out_dir} (fingerprint {fp})")
                    say(format_stats(existing.stats))
                    for line in existing.stats.get("warnings", []):
                        warn(line)
                    return existing
            tmp = f"{out_dir}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
            bars = datasets.is_progress_bar_enabled()
            datasets.disable_progress_bars()  # one line per source instead
            try:
                _prepare_into(cfg, tokenizer, tmp, seed, fp, say, warn)
                old = f"{out_dir}.old-{os.getpid()}"
                if os.path.exists(out_dir):
                    os.rename(out_dir, old)
                os.rename(tmp, out_dir)
                shutil.rmtree(old, ignore_errors=True)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            finally:
                if bars:
                    datasets.enable_progress_bars()
    return PreparedData.load(out_dir, cfg.validation_sequences)


def _remove_interrupted(out_dir: str) -> None:
    """What a preparation into `out_dir` that was killed left: its `<out>.tmp-<pid>` (and
    `<out>.old-<pid>`, the output it was replacing). Only a holder of the lock writes them,
    and this process holds it: they are abandoned."""
    parent, name = os.path.split(out_dir)
    for entry in os.listdir(parent):
        if entry.startswith((f"{name}.tmp-", f"{name}.old-")):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _prepare_into(cfg: DataConfig, tokenizer, tmp: str, seed: int, fp: str, say,
                  warn) -> None:
    t_start = time.time()
    eos_id, pad_id = special_ids(tokenizer)
    encoder = TextEncoder(tokenizer, cfg.parse_special_tokens)
    tok_fp = tokenizer_fingerprint(tokenizer)
    if cfg.synthetic.enabled:
        _check_synthetic(cfg, encoder)
    say(f"Preparing data (fingerprint {fp}, seq_len {cfg.seq_len:,}, seed {seed})")
    log = BadRecordLog(cfg.max_bad_records)
    stores = _load_stores(cfg, tokenizer, encoder, tok_fp, seed, log, tmp, say)
    lengths = {s.name: s.lengths + 1 for s in stores}  # + EOS
    src_ids, doc_ids, plans, budget = plan_mixture(cfg, lengths, seed)
    stats = PackStats(cfg.seq_len, len(stores))
    packer = Packer(
        cfg.seq_len, cfg.packing.strategy, cfg.long_doc_policy, cfg.packing.buffer_sequences, stats
    )
    dtype = token_dtype(len(tokenizer))
    writer = PackedWriter(tmp, cfg.seq_len, dtype, eos_id, stores)
    lens_of = [lengths[s.name] for s in stores]
    items = ((s, d, int(lens_of[s][d])) for s, d in zip(src_ids.tolist(), doc_ids.tolist()))
    for row in packer.pack(items):
        writer.write(row)
    writer.close()
    for f in os.listdir(tmp):
        if f.startswith("stream-"):
            os.remove(os.path.join(tmp, f))
    if stats.sequences == 0:
        raise DataError("data: no sequences were packed (every document was dropped or empty)")
    source_stats = []
    for si, (store, plan) in enumerate(zip(stores, plans)):
        d = plan.to_dict()
        d.update(
            rows_read=store.rows_read,
            bad_records=store.bad_records,
            tokens_packed=stats.source_tokens[si],
        )
        source_stats.append(d)
    stats_dict = {
        "seq_len": cfg.seq_len,
        "strategy": cfg.packing.strategy,
        "long_doc_policy": cfg.long_doc_policy,
        "token_budget": budget,
        "packing": stats.to_dict(),
        "sources": source_stats,
        "bad_records": log.summary(),
        "warnings": unused_source_warnings(cfg, plans),
        "seconds": round(time.time() - t_start, 3),
    }
    write_json(os.path.join(tmp, "stats.json"), stats_dict)
    if log.records:
        with open(os.path.join(tmp, "bad_records.txt"), "w") as fh:
            fh.writelines(f"{r}\n" for r in log.records)
    meta = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fp,
        "seq_len": cfg.seq_len,
        "num_sequences": stats.sequences,
        "num_tokens": stats.tokens,
        "token_dtype": np.dtype(dtype).name,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "vocab_size": len(tokenizer),
        "tokenizer": getattr(tokenizer, "name_or_path", "") or "",
        "tokenizer_fingerprint": tok_fp,
        "seed": seed,
        "sources": [s.name for s in stores],
        "validation_sequences": cfg.validation_sequences,
        "config": cfg.to_dict(),
    }
    write_json(os.path.join(tmp, "meta.json"), meta)
    say(format_stats(stats_dict))
    for line in stats_dict["warnings"]:
        warn(line)
    say(f"Prepared {stats.sequences:,} sequences in {time.time() - t_start:.1f} s")
