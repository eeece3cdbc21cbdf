"""Tokenize + pack throughput of the data pipeline against the plain HF recipe, on CPU.

    python -m bench.data_pipeline                     # ~200 MB corpus, both tokenizers
    python -m bench.data_pipeline --size-mb 20 --tokenizers byte

The corpus is a local jsonl of generated pseudo-English documents (log-normal lengths
with a long tail, like a web + books mix), made once and kept under --work-dir. Each
variant runs in its own process from a cold cache, so that wall time covers reading,
tokenizing, packing and writing, and peak memory is its own:

- ``pipeline``: ``train.data.prepare_data`` (line-exact jsonl reader, validation,
  tokenization with EOS, best-fit-decreasing packing, memory-mapped output);
- ``run_clm``: ``datasets.load_dataset("json")`` + ``map(tokenizer)`` +
  ``map(group_texts)`` (concatenate and chunk), as in transformers' run_clm example.

Tokenizers: ``bpe`` is a byte-level BPE with a 32K vocabulary trained here on a slice of
the corpus (a stand-in for the Qwen tokenizer, which can't be downloaded here); ``byte`` is
the offline byte tokenizer of the tiny default. Results: JSON under bench/results/ and a
Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import subprocess
import sys
import time

WORK_DIR = ".cache/bench/data_pipeline"


def _make_shard(args) -> str:
    from train.data.textgen import TextGenerator

    seed, index, n_docs, path = args
    gen = TextGenerator((seed, "bench", index))
    with open(path, "w") as fh:
        for _ in range(n_docs):
            # Median ~250 words, long tail to ~60K words (book-sized documents).
            words = int(min(60000, max(5, math.exp(gen.rng.gauss(5.5, 1.3)))))
            fh.write(json.dumps({"text": gen.document(words)}) + "\n")
    return path


def make_corpus(path: str, size_mb: int, procs: int = 2) -> str:
    if os.path.exists(path) and abs(os.path.getsize(path) / 2**20 - size_mb) < 0.1 * size_mb:
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    n_docs_per_mb = 307  # measured: the generator's documents average ~3.4 KB
    shards = 4 * procs
    per = max(1, size_mb * n_docs_per_mb // shards)
    parts = [(0, i, per, f"{path}.part{i}") for i in range(shards)]
    with mp.Pool(procs) as pool:
        done = pool.map(_make_shard, parts)
    with open(path + ".tmp", "wb") as out:
        for p in done:
            with open(p, "rb") as fh:
                out.write(fh.read())
            os.remove(p)
    os.replace(path + ".tmp", path)
    return path


def make_bpe_tokenizer(corpus: str, out_dir: str, vocab: int = 32000, sample_mb: int = 20) -> str:
    if os.path.exists(os.path.join(out_dir, "tokenizer.json")):
        return out_dir
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def texts():
        read = 0
        with open(corpus) as fh:
            for line in fh:
                read += len(line)
                if read > sample_mb * 2**20:
                    return
                yield json.loads(line)["text"]

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts(), trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|pad|>"
    )
    tok.save_pretrained(out_dir)
    return out_dir


def _load_tokenizer(spec: str):
    from train.data.tokenizer import load_tokenizer

    return load_tokenizer(spec)


def run_pipeline(corpus: str, tokenizer: str, seq_len: int, num_proc: int, work: str) -> dict:
    from train.data import DataConfig, prepare_data

    tok = _load_tokenizer(tokenizer)
    cfg = DataConfig.from_dict(
        {
            "seq_len": seq_len,
            "sources": [{"path": corpus}],
            "cache_dir": os.path.join(work, "cache"),
            "num_proc": num_proc,
        }
    )
    t0 = time.perf_counter()
    prepared = prepare_data(cfg, tok, os.path.join(work, "out"), verbose=False)
    wall = time.perf_counter() - t0
    p = prepared.stats["packing"]
    return {
        "wall_s": wall,
        "tokens": p["tokens"],
        "sequences": p["sequences"],
        "padding_fraction": p["padding_fraction"],
        "documents": p["documents"],
        "split_documents": p["split_documents"],
        "cross_document_attention": False,
    }


def run_clm(corpus: str, tokenizer: str, seq_len: int, num_proc: int, work: str) -> dict:
    """transformers/examples/pytorch/language-modeling/run_clm.py, data part."""
    from itertools import chain

    import numpy as np
    from datasets import load_dataset

    tok = _load_tokenizer(tokenizer)
    t0 = time.perf_counter()
    raw = load_dataset(
        "json", data_files=corpus, split="train", cache_dir=os.path.join(work, "cache")
    )

    def tokenize_function(examples):
        return tok(examples["text"])

    tokenized = raw.map(
        tokenize_function, batched=True, num_proc=num_proc, remove_columns=raw.column_names
    )

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total = len(concatenated[next(iter(examples))])
        total = (total // seq_len) * seq_len
        result = {
            k: [t[i : i + seq_len] for i in range(0, total, seq_len)]
            for k, t in concatenated.items()
        }
        result["labels"] = result["input_ids"].copy()
        return result

    lm = tokenized.map(group_texts, batched=True, num_proc=num_proc)
    wall = time.perf_counter() - t0
    # Quality numbers, outside the timed part: documents cut at a row end, tokens dropped.
    lengths = np.array([len(x) for x in tokenized["input_ids"]], dtype=np.int64)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    split = int(((starts // seq_len) != ((ends - 1) // seq_len)).sum())
    return {
        "wall_s": wall,
        "tokens": len(lm) * seq_len,
        "tokens_read": int(lengths.sum()),
        "sequences": len(lm),
        "padding_fraction": 0.0,
        "documents": len(lengths),
        "split_documents": split,
        "cross_document_attention": True,
    }


RECIPES = {"pipeline": run_pipeline, "run_clm": run_clm}


def _child(args) -> None:
    result = RECIPES[args.recipe](
        args.corpus, args.tokenizer, args.seq_len, args.num_proc, args.work
    )
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["peak_rss_children_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def _run_variant(recipe, corpus, tokenizer, seq_len, num_proc, work) -> dict:
    import shutil

    shutil.rmtree(work, ignore_errors=True)  # cold cache every time
    os.makedirs(work)
    cmd = [
        sys.executable,
        "-m",
        "bench.data_pipeline",
        "--child",
        recipe,
        "--corpus",
        corpus,
        "--tokenizer-spec",
        tokenizer,
        "--seq-len",
        str(seq_len),
        "--num-proc",
        str(num_proc),
        "--work",
        work,
    ]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{recipe} failed:\n{done.stderr[-3000:]}")
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT ") :])
    result["tokens_per_s"] = result["tokens"] / result["wall_s"]
    result["load_avg_1m_after"] = os.getloadavg()[0]  # other work on the machine skews timings
    shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=200)
    ap.add_argument("--seq-len", type=int, default=8192)
    ap.add_argument("--num-proc", type=int, default=2)
    ap.add_argument("--tokenizers", default="bpe,byte")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--work-dir", default=WORK_DIR)
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/...)")
    # Internal: one variant in a fresh process.
    ap.add_argument("--child", choices=sorted(RECIPES), dest="recipe")
    ap.add_argument("--corpus")
    ap.add_argument("--tokenizer-spec", dest="tokenizer")
    ap.add_argument("--work")
    args = ap.parse_args()
    if args.recipe:
        _child(args)
        return

    corpus = make_corpus(
        os.path.join(args.work_dir, f"corpus-{args.size_mb}mb.jsonl"), args.size_mb
    )
    size_mb = os.path.getsize(corpus) / 2**20
    specs = {}
    for name in args.tokenizers.split(","):
        specs[name] = (
            make_bpe_tokenizer(corpus, os.path.join(args.work_dir, "bpe32k"))
            if name == "bpe"
            else "byte"
        )
    results = []
    for name, spec in specs.items():
        for recipe in ("run_clm", "pipeline"):  # baseline first, then ours, same machine state
            for rep in range(args.repeats):
                r = _run_variant(
                    recipe,
                    corpus,
                    spec,
                    args.seq_len,
                    args.num_proc,
                    os.path.join(args.work_dir, f"run-{recipe}"),
                )
                r.update(recipe=recipe, tokenizer=name, repeat=rep)
                results.append(r)
                print(
                    f"{name:5s} {recipe:9s} {r['wall_s']:7.1f} s  {r['tokens_per_s'] / 1e6:6.2f} M tok/s",
                    flush=True,
                )
    report = {
        "benchmark": "data_pipeline",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "processor": platform.processor(),
        },
        "corpus_mb": round(size_mb, 1),
        "seq_len": args.seq_len,
        "num_proc": args.num_proc,
        "results": results,
    }
    out = args.out or os.path.join("bench", "results", f"cpu-data-pipeline-{report['date']}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(report, fh, indent=1)
    print(f"\nwrote {out}\n")
    print(markdown_table(report))


def markdown_table(report: dict) -> str:
    rows = [
        "| tokenizer | recipe | wall s | M tokens/s | sequences | padding | docs split | cross-doc attention | peak RSS MiB |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in report["results"]:
        rss = r["peak_rss_mib"] + r["peak_rss_children_mib"]
        rows.append(
            f"| {r['tokenizer']} | {r['recipe']} | {r['wall_s']:.1f} | {r['tokens_per_s'] / 1e6:.2f} | "
            f"{r['sequences']:,} | {100 * r['padding_fraction']:.2f}% | "
            f"{100 * r['split_documents'] / max(1, r['documents']):.1f}% | "
            f"{'yes' if r['cross_document_attention'] else 'no'} | {rss:,.0f} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
