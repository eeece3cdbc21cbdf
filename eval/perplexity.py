"""Perplexity by context length and by position, on held-out text, through the training
forward: the decoder stack on packed rows (L2A: the sequence kernels with document
boundaries from the position ids; no padding mask, no T x T mask) and the chunked LM loss
of train/losses.py (no full logits), one call per position bucket.

A target token's position is its position inside its document (position ids restart at
every document), so packed rows of short documents fill the first buckets only.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from eval.errors import EvalError
from eval.load import is_l2a
from eval.routing import bucket_sparsity
from train.data.prepared import IGNORE_INDEX
from train.data.tokenizer import TextEncoder


def _row(ids: np.ndarray, doc_starts: np.ndarray | None = None) -> dict:
    """A packed row from token ids; `doc_starts`: bool, True where a document starts."""
    n = len(ids)
    starts = np.zeros(n, dtype=bool) if doc_starts is None else doc_starts.copy()
    starts[0] = True
    seg = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    position_ids = np.arange(n) - first[seg]
    labels = ids.astype(np.int64).copy()
    labels[starts] = IGNORE_INDEX
    return {"input_ids": ids.astype(np.int64), "position_ids": position_ids, "labels": labels}


def _generated_rows(enc: TextEncoder, length: int, rows: int, seed: int) -> list[dict]:
    from train.data.textgen import TextGenerator

    out = []
    for r in range(rows):
        gen = TextGenerator(("eval-ppl", seed, length, r))
        text, n = "", 0
        while n < length:
            text += " ".join(gen.sentences(max(16, (length - n) // 4))) + " "
            n = int(enc.count([text])[0])
        out.append(_row(enc.encode([text])[0][:length]))
    return out


def _file_rows(path: str, tokenizer, enc: TextEncoder, length: int, rows: int) -> list[dict]:
    from eval.haystack import _read_source

    if path.endswith((".jsonl", ".json", ".ndjson")):
        import json

        docs = [json.loads(line)["text"] for line in open(path, encoding="utf-8") if line.strip()]
    else:
        docs = [_read_source(path, tokenizer)]
    values, lengths = enc.encode(docs)
    eos = tokenizer.eos_token_id
    # Documents back to back, each closed by EOS (as the packer does); positions restart after it.
    pieces, starts = [], []
    offset = 0
    for n in lengths.tolist():
        doc = values[offset:offset + n]
        offset += n
        pieces.append(np.append(doc, eos) if eos is not None else doc)
        s = np.zeros(len(pieces[-1]), dtype=bool)
        s[0] = True
        starts.append(s)
    stream, start = np.concatenate(pieces), np.concatenate(starts)
    got = min(rows, len(stream) // length)
    if got == 0:
        raise EvalError(f"eval.perplexity.data: {path} has {len(stream)} tokens, fewer than the "
                        f"length {length}")
    return [_row(stream[i * length:(i + 1) * length], start[i * length:(i + 1) * length])
            for i in range(got)]


def _prepared_rows(path: str, length: int, rows: int) -> list[dict]:
    from train.data import DataError, PreparedData

    try:
        data = PreparedData.load(path)
        idx = data.split_indices("validation")
    except DataError as e:
        raise EvalError(f"eval.perplexity.data: {e}") from None
    if data.seq_len < length:
        raise EvalError(f"eval.perplexity.data: {path} holds rows of {data.seq_len} tokens, "
                        f"shorter than the length {length} (set eval.perplexity.lengths)")
    out = []
    for i in idx[:rows]:
        ex = data.example(int(i))
        out.append({k: v[:length] for k, v in ex.items()})
    return out


def load_rows(source: str, tokenizer, length: int, rows: int, seed: int = 0) -> list[dict]:
    """`rows` packed rows of `length` tokens: input_ids, position_ids, labels (numpy)."""
    from pathlib import Path

    enc = TextEncoder(tokenizer)
    if source == "generated":
        return _generated_rows(enc, length, rows, seed)
    p = Path(source)
    if p.is_dir():
        if not (p / "meta.json").exists():
            raise EvalError(f"eval.perplexity.data: {source} is a directory but not prepared data")
        return _prepared_rows(source, length, rows)
    if not p.is_file():
        raise EvalError(f"eval.perplexity.data: must be generated, a prepared data directory or "
                        f"a text file, got {source!r}")
    return _file_rows(source, tokenizer, enc, length, rows)


@torch.no_grad()
def decoder_hidden(model, input_ids: torch.Tensor, position_ids: torch.Tensor):
    """Last hidden states (B, T, H) of packed rows, and the routes (L2A) or ().

    L2A: one forward, the kernels keep the documents apart. A dense HF model has no
    document masking without a T x T mask: each document is run on its own."""
    if is_l2a(model):
        out = model.model(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        return out.last_hidden_state, tuple(out.routes)
    from kernels.utils import doc_ids_from_position_ids

    doc_ids = doc_ids_from_position_ids(position_ids)
    rows = []
    for b in range(input_ids.shape[0]):
        change = torch.nonzero(doc_ids[b, 1:] != doc_ids[b, :-1]).flatten() + 1
        bounds = [0, *change.tolist(), input_ids.shape[1]]
        parts = [model.model(input_ids=input_ids[b:b + 1, s:e], use_cache=False).last_hidden_state
                 for s, e in zip(bounds[:-1], bounds[1:])]
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows, dim=0), ()


def bucket_edges(length: int, buckets: int) -> list[int]:
    return [round(i * length / buckets) for i in range(buckets + 1)]


@torch.no_grad()
def perplexity_at(model, rows: list[dict], length: int, buckets: int, chunk_size: int = 4096):
    """Loss per position bucket for rows of one length -> (list of bucket dicts, routing)."""
    from train.losses import causal_lm_loss

    device = next(model.parameters()).device
    edges = bucket_edges(length, buckets)
    loss_sum = [0.0] * buckets
    count = [0] * buckets
    skipped = tokens = None
    weight = model.get_output_embeddings().weight
    for row in rows:
        ids = torch.as_tensor(row["input_ids"], device=device)[None]
        pos = torch.as_tensor(row["position_ids"], device=device)[None]
        labels = torch.as_tensor(row["labels"], device=device)[None]
        hidden, routes = decoder_hidden(model, ids, pos)
        bucket = torch.bucketize(pos, torch.tensor(edges[1:-1], device=device), right=True)
        for k in range(buckets):
            # A target counts in the bucket of its own position (causal_lm_loss shifts).
            lk = torch.where(bucket == k, labels, torch.full_like(labels, IGNORE_INDEX))
            s, n = causal_lm_loss(hidden, weight, lk, chunk_size=chunk_size, reduction="sum",
                                  return_num_tokens=True)
            loss_sum[k] += float(s)
            count[k] += int(n)
        if routes:
            s_k, t_k = bucket_sparsity(routes, bucket, labels != IGNORE_INDEX, buckets)
            skipped = s_k if skipped is None else skipped + s_k
            tokens = t_k if tokens is None else tokens + t_k
    out = []
    for k in range(buckets):
        loss = loss_sum[k] / count[k] if count[k] else None
        out.append({"length": length, "bucket": k, "start": edges[k], "end": edges[k + 1],
                    "tokens": count[k], "loss": loss,
                    "ppl": math.exp(loss) if loss is not None and loss < 700 else None})
    routing = None
    if skipped is not None:
        per_bucket = (skipped / tokens.clamp(min=1)).tolist()  # (L, buckets)
        routing = {"length": length, "bucket_tokens": tokens.tolist(),
                   "layer_bucket_sparsity": per_bucket,
                   "layer_sparsity": (skipped.sum(1) / tokens.sum().clamp(min=1)).tolist()}
    return out, routing


def total_loss(buckets: list[dict]) -> float | None:
    n = sum(b["tokens"] for b in buckets)
    if not n:
        return None
    return sum(b["loss"] * b["tokens"] for b in buckets if b["tokens"]) / n
