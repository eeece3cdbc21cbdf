"""Export any checkpoint (any ZeRO stage, any world size) as an HF model with safetensors.

    python -m train.export <checkpoint dir | run dir> <out dir> [--dtype auto|bf16|fp32]

A run directory means its latest complete checkpoint. The result reloads with
`AutoModelForCausalLM.from_pretrained(out)` after `import l2a`. Runs on CPU, no process group.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from pathlib import Path

import torch

from l2a.errors import WriteError
from train.checkpoint import DS_TAG, CheckpointError, checkpoint_of, read_marker

WRAPPER_PREFIX = "lm."  # train.trainer.LossModule keeps the causal LM as `.lm`


def _consolidated_state_dict(ckpt: Path) -> dict:
    """fp32 weights from the (possibly partitioned) DeepSpeed state: trained parameters from
    the optimizer's fp32 master copies; frozen ones from the module state (ZeRO 0-2 keep the
    whole module there; ZeRO-3 keeps frozen fragments that zero_to_fp32 gathers)."""
    import logging

    from deepspeed.utils import logger as ds_logger
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from train.library_output import quiet_deepspeed

    quiet_deepspeed()  # its per-shard progress bars, unless train.verbose
    sd: dict = {}
    module_file = ckpt / DS_TAG / "mp_rank_00_model_states.pt"
    level = ds_logger.level
    ds_logger.setLevel(logging.WARNING)
    try:
        if module_file.exists():
            module = torch.load(module_file, map_location="cpu", weights_only=False)["module"]
            sd.update({k: v.float() for k, v in module.items()})
        with contextlib.redirect_stdout(io.StringIO()):  # zero_to_fp32 prints progress
            sd.update(get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=DS_TAG))
    except Exception as e:
        text = str(e).strip().splitlines()
        raise CheckpointError(f"{ckpt}: cannot consolidate the DeepSpeed state "
                              f"({type(e).__name__}: {text[0] if text else ''})") from None
    finally:
        ds_logger.setLevel(level)
    return {k[len(WRAPPER_PREFIX):] if k.startswith(WRAPPER_PREFIX) else k: v for k, v in sd.items()}


def resolve_checkpoint(ckpt: str | os.PathLike) -> tuple[Path, dict]:
    """A checkpoint directory, or a run directory meaning its latest complete checkpoint
    -> (checkpoint dir, its marker). One-line CheckpointError otherwise."""
    ckpt = checkpoint_of(ckpt)
    return ckpt, read_marker(ckpt)


@contextlib.contextmanager
def _plain_construction():
    """Build the model whole, even where a ZeRO-3 run of this process left transformers'
    zero.Init integration on (it would build empty partitioned stand-ins)."""
    from transformers.integrations import deepspeed as hf_ds

    saved = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved


def load_checkpoint_model(ckpt: str | os.PathLike):
    """The HF model (fp32, CPU, eval mode) and tokenizer of a checkpoint or run directory,
    plus the marker of the checkpoint used (for its precision)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    import l2a  # noqa: F401  (registers the L2A model types)

    ckpt, meta = resolve_checkpoint(ckpt)
    config = AutoConfig.from_pretrained(ckpt / "hf")
    sd = _consolidated_state_dict(ckpt)
    with _plain_construction():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise CheckpointError(
            f"{ckpt}: weights do not match the saved config "
            f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]})"
        )
    model.tie_weights()
    model.eval()
    return model, AutoTokenizer.from_pretrained(ckpt / "hf"), meta


def export_checkpoint(ckpt: str | os.PathLike, out: str | os.PathLike, dtype: str = "auto",
                      overwrite: bool = False) -> Path:
    from l2a.convert import ConversionError, check_output_dir, save_atomically
    from l2a.errors import writing_to

    out = Path(out)
    resolve_checkpoint(ckpt)  # a bad checkpoint fails before the output is looked at
    try:
        check_output_dir(out, overwrite)
    except ConversionError as e:
        raise CheckpointError(str(e)) from None
    model, tokenizer, meta = load_checkpoint_model(ckpt)
    if dtype == "auto":
        dtype = meta.get("precision", "fp32")
    model.to({"bf16": torch.bfloat16, "fp32": torch.float32}[dtype])
    with writing_to(out):  # a full disk: one line; the temporary directory is removed
        return save_atomically(model, tokenizer, out, overwrite=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint directory (or a run directory: its latest)")
    parser.add_argument("out", help="output directory for the HF model")
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto: the training precision")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        path = export_checkpoint(args.checkpoint, args.out, args.dtype, args.overwrite)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except WriteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
