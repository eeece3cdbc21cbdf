"""`python -m train.prune`: prune global branches (the library: l2a/prune.py). Measure how
often each layer routes tokens to global attention on calibration data, and turn the
least-used layers into local-only layers (no router, no global projections, no global KV
cache).

    python -m train.prune --model ckpt/l2a --out ckpt/l2a-pruned --haystack --keep-fraction 0.5
    python -m train.prune --model ckpt/l2a --out ckpt/l2a-pruned --data data/prepared --threshold 0.05
    python -m train.prune --model ckpt/l2a --out ckpt/l2a-pruned --keep-layers 0,4,9  # no data

Calibration data (one of): ``--data`` prepared data (``train/data``), ``--text-file`` a
local ``.txt`` / ``.jsonl`` (field ``text``), ``--haystack`` generated needle-in-a-haystack
samples (``train.data.synthetic``, the evaluation's generator). Selection (one of):
``--threshold`` keeps layers whose usage is at least that fraction, ``--keep`` the N most
used layers, ``--keep-fraction`` that share of them, ``--keep-layers`` a given list. The
pruned model lists the layers that keep a global branch in ``config.l2a_global_layers``
and loads through ``AutoModelForCausalLM``; ``prune_report.json`` beside it holds usage per
layer and the KV cache bytes before and after. Bad input: one line on stderr, exit 2,
nothing written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from l2a.errors import ConfigError, first_line
from l2a.prune import (
    PruneError,
    global_layers,
    measure_global_usage,
    prune_report,
    select_global_layers,
)

# ---- calibration data -------------------------------------------------------------------


def _load_prepared(path: str):
    from train.data.errors import DataError
    from train.data.prepared import PreparedData

    try:
        return PreparedData.load(path)
    except DataError as err:
        raise PruneError(f"--data: {err}") from None


def _prepared_batches(data, num_samples: int):
    for i in range(min(num_samples, data.num_sequences)):
        ex = data.example(i)
        yield {
            "input_ids": torch.as_tensor(ex["input_ids"])[None],
            "position_ids": torch.as_tensor(ex["position_ids"])[None],
            "token_mask": torch.as_tensor(ex["labels"] != -100)[None],
        }


def _jsonl_texts(text: str, path: str) -> list[str]:
    docs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)["text"]
        except (json.JSONDecodeError, KeyError, TypeError, IndexError) as err:
            raise PruneError(f"--text-file: {path}:{n}: not a JSON object with a 'text' field "
                             f"({first_line(err, with_type=True)})") from None
        if not isinstance(doc, str):
            raise PruneError(f"--text-file: {path}:{n}: field 'text' is "
                             f"{type(doc).__name__}, expected a string")
        docs.append(doc)
    return docs


def _text_file_batches(path: str, tokenizer, seq_len: int, num_samples: int):
    p = Path(path)
    try:  # replacement characters would calibrate the router on text nobody wrote
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise PruneError(f"--text-file: {path}: not UTF-8 text (invalid byte at offset "
                         f"{err.start})") from None
    except OSError as err:
        raise PruneError(f"--text-file: {path}: cannot read ({err.strerror})") from None
    if p.suffix == ".jsonl":
        text = "\n\n".join(_jsonl_texts(text, path))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < seq_len:
        raise PruneError(f"--text-file: {path}: {len(ids)} tokens, fewer than --seq-len {seq_len}")
    for s in range(0, min(len(ids) - seq_len + 1, num_samples * seq_len), seq_len):
        yield {"input_ids": torch.tensor(ids[s : s + seq_len])[None]}


def _haystack_batches(tokenizer, seq_len: int, num_samples: int, seed: int):
    from train.data.synthetic import generate_sample

    for i in range(num_samples):
        sample = generate_sample("niah_single", seq_len, tokenizer, seed=seed, index=i)
        ids = tokenizer(sample.prompt + sample.answer, add_special_tokens=False)["input_ids"]
        yield {"input_ids": torch.tensor(ids[:seq_len])[None]}


# ---- CLI ----------------------------------------------------------------------------------


def _parse_layers(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer indices, got {text!r}"
        ) from None


def _args(argv):
    ap = argparse.ArgumentParser(prog="python -m train.prune", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="directory of an L2A model (HF format)")
    ap.add_argument("--out", required=True, help="output directory of the pruned model")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--data", help="prepared data directory (python -m train.data.prepare)")
    src.add_argument("--text-file", help="local .txt or .jsonl (field 'text') file")
    src.add_argument("--haystack", action="store_true", help="generated needle-in-a-haystack text")
    ap.add_argument("--num-samples", type=int, default=8)
    ap.add_argument(
        "--seq-len", type=int, default=None,
        help="tokens per sample (text file, haystack; --data has its own); default 4096, or "
        "the model's context if shorter"
    )
    ap.add_argument("--tokenizer", default=None, help="tokenizer (default: the model's directory)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threshold", type=float, default=None, help="keep layers routing >= this fraction"
    )
    ap.add_argument("--keep", type=int, default=None, help="keep the N most used global branches")
    ap.add_argument("--keep-fraction", type=float, default=None, help="keep this share of them")
    ap.add_argument(
        "--keep-layers", type=_parse_layers, default=None, help="keep these, e.g. 0,4,9"
    )
    ap.add_argument(
        "--context", type=int, default=131072, help="context length of the KV byte report"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--overwrite", action="store_true")
    return ap.parse_args(argv)


def _check_args(args):
    """Everything checkable before the weights are loaded (bad input fails before any
    work, and nothing is written); returns the model's config."""
    from transformers import AutoConfig

    import l2a  # noqa: F401  (registers the Auto classes)

    for name in ("num_samples", "seq_len", "context"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise PruneError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    for name, value in (("threshold", args.threshold), ("keep-fraction", args.keep_fraction)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise PruneError(f"--{name}: must be in [0, 1], got {value}")
    selectors = [args.threshold, args.keep, args.keep_fraction, args.keep_layers]
    if sum(x is not None for x in selectors) != 1:
        raise PruneError("give exactly one of --threshold, --keep, --keep-fraction, --keep-layers")
    has_data = args.data or args.text_file or args.haystack
    if args.keep_layers is None and not has_data:
        raise PruneError(
            "--threshold / --keep / --keep-fraction need calibration data: --data, --text-file or --haystack"
        )
    if args.text_file and not Path(args.text_file).is_file():
        why = "not a file" if Path(args.text_file).exists() else "no such file"
        raise PruneError(f"--text-file: {args.text_file}: {why}")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise PruneError(f"{out}: output directory exists and is not empty (pass --overwrite)")
    model_config = Path(args.model) / "config.json"
    if not model_config.is_file():
        raise PruneError(f"--model: {args.model}: no config.json (not an HF model directory)")
    try:
        model_type = json.loads(model_config.read_text()).get("model_type", "")
    except json.JSONDecodeError as err:
        raise PruneError(f"--model: {model_config}: unreadable ({err})") from None
    if not str(model_type).startswith("l2a_"):
        raise PruneError(
            f"--model: {args.model} is a {model_type!r} model, not an L2A model "
            "(convert it with python -m l2a.convert)"
        )
    try:
        config = AutoConfig.from_pretrained(args.model)
    except (OSError, ValueError) as err:
        raise PruneError(f"--model: {model_config}: {first_line(err)}") from None
    context = getattr(config, "max_position_embeddings", None)
    args.prepared = _check_prepared(args, config, context) if args.data else None
    if args.seq_len is None:
        args.seq_len = min(4096, context or 4096)
    elif context and args.seq_len > context:
        raise PruneError(f"--seq-len: {args.seq_len} is above the model's context "
                         f"(max_position_embeddings {context})")
    # The selectors against the real layers, with a stand-in usage (the real one comes later).
    candidates = global_layers(config)
    select_global_layers(
        dict.fromkeys(candidates, 0.0),
        candidates,
        args.threshold,
        args.keep,
        args.keep_fraction,
        args.keep_layers,
    )
    return config


def _check_prepared(args, config, context):
    """Prepared data has its own row length and tokenizer: rows past the model's positions,
    or token ids past its vocabulary, would calibrate on what the model never sees."""
    data = _load_prepared(args.data)
    if args.seq_len is not None:
        raise PruneError(f"--seq-len: --data has rows of {data.seq_len} tokens of its own, "
                         f"got {args.seq_len} (drop --seq-len)")
    if context and data.seq_len > context:
        raise PruneError(f"--data: {args.data}: rows of {data.seq_len} tokens, above the model's "
                         f"context (max_position_embeddings {context}); prepare it with "
                         f"data.seq_len <= {context}")
    vocab = int(data.meta.get("vocab_size", 0))
    if vocab > config.vocab_size:
        raise PruneError(f"--data: {args.data}: prepared with a tokenizer of {vocab} tokens, "
                         f"more than the model's vocabulary ({config.vocab_size})")
    args.seq_len = data.seq_len
    return data


def run(args) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from l2a.convert import save_atomically

    _check_args(args)
    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(args.model).to(args.device).eval()
    config = model.config
    candidates = global_layers(config)
    tokenizer = None
    if args.text_file or args.haystack or Path(args.model, "tokenizer_config.json").exists():
        try:
            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
        except (OSError, ValueError) as err:
            if args.text_file or args.haystack:
                raise PruneError(
                    f"--tokenizer: cannot load {args.tokenizer or args.model} ({err})"
                ) from None
    usage = None
    if args.data:
        usage = measure_global_usage(model, _prepared_batches(args.prepared, args.num_samples))
    elif args.text_file:
        usage = measure_global_usage(
            model, _text_file_batches(args.text_file, tokenizer, args.seq_len, args.num_samples)
        )
    elif args.haystack:
        usage = measure_global_usage(
            model, _haystack_batches(tokenizer, args.seq_len, args.num_samples, args.seed)
        )
    keep = select_global_layers(
        usage, candidates, args.threshold, args.keep, args.keep_fraction, args.keep_layers
    )
    calibration = {
        "source": "data" if args.data else "text_file" if args.text_file
        else "haystack" if args.haystack else None,
        "path": args.data or args.text_file,
        "num_samples": args.num_samples,
        "seq_len": args.seq_len,
    }
    report = {"model": str(args.model),
              **prune_report(model, keep, args.context, usage, calibration)}
    out = save_atomically(model.to("cpu"), tokenizer, args.out, overwrite=args.overwrite)
    (out / "prune_report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _print_report(report: dict) -> None:
    usage = report["usage"] or {}
    kept = set(report["kept_global_layers"])
    print("layer  usage    global branch")
    for layer in sorted(set(map(int, usage)) | kept | set(report["pruned_layers"])):
        u = usage.get(str(layer))
        print(
            f"{layer:5d}  {'-' if u is None else f'{u:.4f}':7s}  {'kept' if layer in kept else 'pruned'}"
        )
    kv = report["kv_bytes"]
    print(
        f"KV cache at {kv['context']} tokens: {kv['before'] / 2**30:.3f} GiB -> {kv['after'] / 2**30:.3f} GiB "
        f"({kv['ratio']:.3f}x)"
    )


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    try:
        report = run(args)
    except (PruneError, ConfigError) as err:
        print(f"train.prune: error: {err}", file=sys.stderr)
        return 2
    _print_report(report)
    print(f"train.prune: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
