"""Qwen3-shaped base models with random weights, built locally (no download).

`experiment=tiny` and the tests use a tiny one written to a directory together with the
byte tokenizer, exactly like a hub checkpoint; throughput benchmarks build a full-size shape
in memory. Same shape + seed => bitwise-identical weights.

    python -m train.tiny_base --out .cache/l2a/tiny-base
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

# The tiny default: 2 layers, GQA (4 query heads over 2 KV heads), tied embeddings.
TINY_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": None,
    "tie_word_embeddings": True,
    "max_position_embeddings": 2048,
}


def qwen3_config(shape: dict, vocab_size: int | None = None, rope_theta: float | None = None,
                 max_position_embeddings: int | None = None):
    """A `Qwen3Config` of `shape`; `vocab_size: None` in the shape takes `vocab_size`, rounded
    up to a multiple of 64 (tensor-core friendly, as real vocabularies are)."""
    from transformers import Qwen3Config

    values = dict(shape)
    if values.get("vocab_size") is None:
        if vocab_size is None:
            raise ValueError("model.random_base.vocab_size: null needs a tokenizer to size it")
        values["vocab_size"] = -(-vocab_size // 64) * 64
    if rope_theta is not None:
        values["rope_theta"] = float(rope_theta)
    if max_position_embeddings is not None:
        values["max_position_embeddings"] = int(max_position_embeddings)
    values.setdefault("use_cache", False)
    return Qwen3Config(**values)


def random_qwen3(config, seed: int = 0, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, attn_implementation: str | None = None):
    """A `Qwen3ForCausalLM` with the HF initialisation under a fixed seed (all devices give
    a deterministic model; CPU gives the same bits everywhere)."""
    from transformers import Qwen3ForCausalLM

    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    devices = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if torch.device(device).type == "cuda":
            torch.cuda.manual_seed(seed)
        with torch.device(device):
            model = Qwen3ForCausalLM._from_config(config, dtype=dtype, **kwargs)
    model.generation_config.pad_token_id = config.pad_token_id
    return model


def byte_tokenizer():
    from train.data import build_byte_tokenizer

    return build_byte_tokenizer()


def build_tiny_base(out: str | os.PathLike, shape: dict | None = None, seed: int = 0,
                    overwrite: bool = False) -> Path:
    """Write a random-weight Qwen3-shaped base and the byte tokenizer to `out` (atomically:
    a temporary sibling, then a rename). An existing complete directory is reused."""
    out = Path(out)
    if (out / "config.json").exists() and not overwrite:
        return out
    tokenizer = byte_tokenizer()
    config = qwen3_config(shape or TINY_SHAPE, vocab_size=len(tokenizer))
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    model = random_qwen3(config, seed=seed)
    from l2a.convert import save_atomically

    return save_atomically(model, tokenizer, out, overwrite=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory to write (config, weights, tokenizer)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    path = build_tiny_base(args.out, seed=args.seed, overwrite=args.overwrite)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
