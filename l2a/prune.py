"""Prune global branches: measure how often each layer routes tokens to global attention on
calibration data, and turn the least-used layers into local-only layers (no router, no
global projections, no global KV cache).

    python -m l2a.prune --model ckpt/l2a --out ckpt/l2a-pruned --haystack --keep-fraction 0.5
    python -m l2a.prune --model ckpt/l2a --out ckpt/l2a-pruned --data data/prepared --threshold 0.05
    python -m l2a.prune --model ckpt/l2a --out ckpt/l2a-pruned --keep-layers 0,4,9  # no data

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

from .cache import cache_slots, kv_cache_bytes
from .configuration import _validate_l2a_fields
from .errors import ConfigError, first_line


class PruneError(ValueError):
    """Bad input of the pruning tool (argument, model or data); one line."""


def global_layers(config) -> list[int]:
    return [i for i in range(config.num_hidden_layers) if config.has_global_branch(i)]


@torch.no_grad()
def measure_global_usage(model, batches) -> dict[int, float]:
    """Fraction of tokens each layer routes to its global branch.

    ``batches``: dicts with ``input_ids`` and optionally ``position_ids`` (packed documents)
    and ``token_mask`` (bool, the tokens to count; default all)."""
    layers = global_layers(model.config)
    routed = torch.zeros(len(layers), dtype=torch.float64)
    counted = 0
    device = next(model.parameters()).device
    for batch in batches:
        ids = batch["input_ids"].to(device)
        pos = batch.get("position_ids")
        out = model(ids, position_ids=None if pos is None else pos.to(device), use_cache=False)
        mask = batch.get("token_mask")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.to(device).bool()
        for j, d in enumerate(out.routes):
            routed[j] += float((d & mask).sum())
        counted += int(mask.sum())
    if counted == 0:
        raise PruneError("calibration data: no tokens to measure on")
    return {layer: float(r) / counted for layer, r in zip(layers, routed.tolist())}


def select_global_layers(
    usage: dict[int, float] | None,
    candidates: list[int],
    threshold: float | None = None,
    keep: int | None = None,
    keep_fraction: float | None = None,
    keep_layers: list[int] | None = None,
) -> list[int]:
    """The layers that keep their global branch (sorted); exactly one selector is given."""
    chosen = [x is not None for x in (threshold, keep, keep_fraction, keep_layers)]
    if sum(chosen) != 1:
        raise PruneError("give exactly one of --threshold, --keep, --keep-fraction, --keep-layers")
    n = len(candidates)
    if keep_layers is not None:
        bad = sorted(set(keep_layers) - set(candidates))
        if bad:
            raise PruneError(
                f"--keep-layers: {bad} are not layers with a global branch (these are: {candidates})"
            )
        return sorted(set(keep_layers))
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise PruneError(f"--threshold: must be in [0, 1], got {threshold}")
    if keep is not None and not 0 <= keep <= n:
        raise PruneError(f"--keep: must be in [0, {n}] (layers with a global branch), got {keep}")
    if keep_fraction is not None and not 0.0 <= keep_fraction <= 1.0:
        raise PruneError(f"--keep-fraction: must be in [0, 1], got {keep_fraction}")
    if usage is None:
        raise PruneError("--threshold / --keep / --keep-fraction need calibration data")
    if threshold is not None:
        return [i for i in candidates if usage[i] >= threshold]
    if keep_fraction is not None:
        keep = round(keep_fraction * n)
    # Most used first; ties keep the earlier layer.
    ranked = sorted(candidates, key=lambda i: (-usage[i], i))
    return sorted(ranked[:keep])


def prune_global_branches(model, keep: list[int]):
    """Make every L2A layer not in ``keep`` local-only, in place; returns the model."""
    config = model.config
    candidates = global_layers(config)
    bad = sorted(set(keep) - set(candidates))
    if bad:
        raise PruneError(f"layers {bad} have no global branch to keep (these are: {candidates})")
    config.l2a_global_layers = sorted(set(keep))
    _validate_l2a_fields(config)
    slots = cache_slots(config)
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        if i in candidates and i not in keep:
            del attn.global_attn, attn.router, attn.global_norm
            attn.has_global = False
        if layer.is_l2a:
            attn.local_slot, attn.global_slot = slots[i]
        else:
            layer.cache_slot = slots[i][0]
    return model


# ---- calibration data -------------------------------------------------------------------


def _prepared_batches(path: str, num_samples: int):
    from train.data.errors import DataError
    from train.data.prepared import PreparedData

    try:
        data = PreparedData.load(path)
    except DataError as err:
        raise PruneError(f"--data: {err}") from None
    for i in range(min(num_samples, data.num_sequences)):
        ex = data.example(i)
        yield {
            "input_ids": torch.as_tensor(ex["input_ids"])[None],
            "position_ids": torch.as_tensor(ex["position_ids"])[None],
            "token_mask": torch.as_tensor(ex["labels"] != -100)[None],
        }


def _text_file_batches(path: str, tokenizer, seq_len: int, num_samples: int):
    p = Path(path)
    try:  # replacement characters would calibrate the router on text nobody wrote
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise PruneError(f"--text-file: {path}: not UTF-8 text (invalid byte at offset "
                         f"{err.start})") from None
    if p.suffix == ".jsonl":
        try:
            docs = [json.loads(line)["text"] for line in text.splitlines() if line.strip()]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise PruneError(
                f"--text-file: {path}: not jsonl with a 'text' field ({err})"
            ) from None
        text = "\n\n".join(docs)
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
    ap = argparse.ArgumentParser(prog="python -m l2a.prune", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="directory of an L2A model (HF format)")
    ap.add_argument("--out", required=True, help="output directory of the pruned model")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--data", help="prepared data directory (python -m train.data.prepare)")
    src.add_argument("--text-file", help="local .txt or .jsonl (field 'text') file")
    src.add_argument("--haystack", action="store_true", help="generated needle-in-a-haystack text")
    ap.add_argument("--num-samples", type=int, default=8)
    ap.add_argument(
        "--seq-len", type=int, default=None,
        help="tokens per sample (text file, haystack); default 4096, or the model's context "
        "if shorter"
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
        raise PruneError(f"--text-file: {args.text_file}: no such file")
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


def run(args) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .convert import save_atomically

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
        usage = measure_global_usage(model, _prepared_batches(args.data, args.num_samples))
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
    itemsize = next(model.parameters()).element_size()
    before = kv_cache_bytes(config, args.context, itemsize)
    prune_global_branches(model, keep)
    after = kv_cache_bytes(config, args.context, itemsize)
    report = {
        "model": str(args.model),
        "calibration": {
            "source": "data"
            if args.data
            else "text_file"
            if args.text_file
            else "haystack"
            if args.haystack
            else None,
            "path": args.data or args.text_file,
            "num_samples": args.num_samples,
            "seq_len": args.seq_len,
        },
        "usage": {str(i): usage[i] for i in candidates} if usage is not None else None,
        "kept_global_layers": keep,
        "pruned_layers": [i for i in candidates if i not in keep],
        "kv_bytes": {
            "context": args.context,
            "itemsize": itemsize,
            "before": before,
            "after": after,
            "ratio": after / before,
        },
    }
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
        print(f"l2a.prune: error: {err}", file=sys.stderr)
        return 2
    _print_report(report)
    print(f"l2a.prune: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
