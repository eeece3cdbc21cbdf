"""Convert a dense Qwen2 / Qwen2.5 / Qwen3 checkpoint into an L2A model.

    python -m l2a.convert --base Qwen/Qwen3-8B --out ckpt/qwen3-8b-l2a \
        --init paper --window 4095 --rope-theta 5e6 --max-position-embeddings 131072

``paper``: both branches copy the base attention, RMSNorm_global copies the input norm, the
router is zero (p = 0.5, d = 1 for every token at step 0); not function-preserving, since
attention is applied twice. ``identity``: the same with the local o_proj zeroed, so the
converted model's logits equal the base model's before training.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from pathlib import Path

import torch
from torch import nn

from .configuration import L2A_INIT_MODES, L2AQwen2Config, L2AQwen3Config
from .errors import first_line as _first_line
from .modeling import L2AQwen2ForCausalLM, L2AQwen3ForCausalLM
from .runtime import LEGACY_RUNTIME_KEYS

# base model_type -> (L2A config, L2A causal LM)
SUPPORTED = {
    "qwen3": (L2AQwen3Config, L2AQwen3ForCausalLM),
    "qwen2": (L2AQwen2Config, L2AQwen2ForCausalLM),
}
ATTN_PARAMS = ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")


class ConversionError(RuntimeError):
    """A problem with the inputs of a conversion; its message is one line for the user."""


def l2a_config_from_base(base_config, **l2a_fields):
    """The L2A config of a base config. ``rope_theta`` / ``max_position_embeddings`` override
    the base values (the 128K recipe raises theta to 5e6); other keys are ``l2a_*`` fields."""
    model_type = getattr(base_config, "model_type", None)
    if model_type not in SUPPORTED:
        raise ConversionError(
            f"unsupported architecture {model_type!r}: expected one of {sorted(SUPPORTED)}"
        )
    config_cls = SUPPORTED[model_type][0]
    values = base_config.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "auto_map", "dtype", "torch_dtype"):
        values.pop(key, None)
    rope_theta = l2a_fields.pop("rope_theta", None)
    max_pos = l2a_fields.pop("max_position_embeddings", None)
    if rope_theta is not None:
        rope = dict(values.get("rope_parameters") or {"rope_type": "default"})
        rope["rope_theta"] = float(rope_theta)
        values["rope_parameters"] = rope
    if max_pos is not None:
        values["max_position_embeddings"] = int(max_pos)
    values.update({k: v for k, v in l2a_fields.items() if v is not None})
    _check_attention_shape(values)
    window, context = values.get("l2a_window"), values.get("max_position_embeddings")
    if window is not None and context is not None and int(window) > int(context):
        # A window past the context is full attention under another name: a typo, surely.
        raise ConversionError(
            f"window: must be at most the model's context (max_position_embeddings="
            f"{context}), got {window}"
        )
    return config_cls(**values)


def _check_attention_shape(values: dict) -> None:
    """What no L2A model can run with (NaN logits, an empty context, heads that do not
    group): refused here with the name of the config value, not as a weight mismatch or a
    NaN loss later."""
    theta = (values.get("rope_parameters") or {}).get("rope_theta", values.get("rope_theta"))
    if theta is not None and not (isinstance(theta, (int, float)) and math.isfinite(theta)
                                  and theta > 0):
        raise ConversionError(f"rope_theta: must be a positive number, got {theta!r}")
    max_pos = values.get("max_position_embeddings")
    if max_pos is not None and not (isinstance(max_pos, int) and max_pos > 0):
        raise ConversionError(f"max_position_embeddings: must be a positive integer, got {max_pos!r}")
    heads, kv = values.get("num_attention_heads"), values.get("num_key_value_heads")
    if isinstance(heads, int) and isinstance(kv, int) and (kv <= 0 or heads % kv):
        raise ConversionError(f"num_key_value_heads: must divide num_attention_heads ({heads}), "
                              f"got {kv}")


def _l2a_config(base_config, init: str, l2a_fields: dict):
    """The L2A config of a conversion (every setting validated: one-line errors)."""
    if init not in L2A_INIT_MODES:
        raise ConversionError(f"--init: must be one of {L2A_INIT_MODES}, got {init!r}")
    runtime = sorted(k for k in l2a_fields if f"l2a_{k}" in LEGACY_RUNTIME_KEYS)
    if runtime:  # a caller's mistake, not the user's: a runtime switch shapes no weight
        raise TypeError(f"convert_model: {runtime[0]} is not a conversion setting; set "
                        f"model.l2a_runtime (l2a/runtime.py) on the converted model")
    fields = {
        (k if k in ("rope_theta", "max_position_embeddings") else f"l2a_{k}"): v
        for k, v in l2a_fields.items()
    }
    fields["l2a_init"] = init
    try:
        return l2a_config_from_base(base_config, **fields)
    except ValueError as err:
        raise ConversionError(str(err)) from err


def conversion_config(base_config, init: str = "paper", **l2a_fields):
    """The config `convert_model` gives a base of this config (no weights needed)."""
    return _l2a_config(base_config, init, l2a_fields)


@torch.no_grad()
def convert_model(base_model: nn.Module, init: str = "paper", **l2a_fields) -> nn.Module:
    """Build the L2A model of a loaded dense Qwen causal LM (same dtype and device).

    ``l2a_fields``: ``window``, ``router_tau``, ``router_threshold``, ``layers`` (stored as
    ``l2a_<name>``), and ``rope_theta``, ``max_position_embeddings``. Runtime options (backend,
    routed projections, ...) are set on the result: ``model.l2a_runtime``.
    """
    config = _l2a_config(base_model.config, init, l2a_fields)
    model_cls = SUPPORTED[base_model.config.model_type][1]
    param = next(base_model.parameters())
    with torch.device("meta"):
        model = model_cls(config)
    model = model.to_empty(device=param.device).to(param.dtype)
    model.load_state_dict(_l2a_state_dict(base_model.state_dict(), config, init), strict=True)
    # to_empty() gave lm_head its own storage: tie it to the embeddings again where the base
    # ties them (Qwen3 up to 4B, Qwen2.5 up to 3B), or the model carries a second copy of the
    # largest matrix (311M parameters at Qwen3-1.7B) that ZeRO-3 gathers every step.
    if config.tie_word_embeddings:
        model.tie_weights()
    # Non-persistent buffers (rotary inv_freq) are neither in the state dict nor initialised
    # by to_empty(): build them again, from the (possibly raised) theta.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config).to(param.device)
    if getattr(base_model, "generation_config", None) is not None:
        model.generation_config = base_model.generation_config
    model.eval()
    return model


def _l2a_state_dict(base: dict, config, init: str) -> dict:
    """Map base weight names onto the L2A layout (see the module docstring for the init)."""
    out = {}
    for name, tensor in base.items():
        parts = name.split(".")
        if "self_attn" not in parts:
            out[name] = tensor
            continue
        layer = int(parts[parts.index("layers") + 1])
        if not config.is_l2a_layer(layer):
            out[name] = tensor
            continue
        prefix, _, leaf = name.partition(".self_attn.")
        if not leaf.startswith(ATTN_PARAMS):
            raise ConversionError(f"unexpected attention weight {name!r} in the base model")
        out[f"{prefix}.self_attn.global_attn.{leaf}"] = tensor.clone()
        local = tensor.clone()
        if init == "identity" and leaf.startswith("o_proj"):
            local.zero_()  # the local branch adds nothing: function-preserving
        out[f"{prefix}.self_attn.local_attn.{leaf}"] = local
    for layer in range(config.num_hidden_layers):
        if not config.is_l2a_layer(layer):
            continue
        prefix = f"model.layers.{layer}"
        out[f"{prefix}.self_attn.global_norm.weight"] = base[f"{prefix}.input_layernorm.weight"].clone()
        w = base[f"{prefix}.input_layernorm.weight"]
        out[f"{prefix}.self_attn.router.weight"] = torch.zeros(1, config.hidden_size, dtype=w.dtype, device=w.device)
    if "lm_head.weight" not in out and config.tie_word_embeddings:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def read_base_config(base: str):
    """The config of a dense base (hub id or local dir), of a supported architecture."""
    from transformers import AutoConfig

    local = Path(base).expanduser()
    if _looks_like_path(base) and not local.is_dir():
        raise ConversionError(f"{base}: " + ("not a directory" if local.exists()
                                             else "no such directory"))
    try:
        base_config = AutoConfig.from_pretrained(base)
    except (OSError, ValueError) as err:
        raise ConversionError(f"cannot read the config of base model {base!r}: {_first_line(err)}") from err
    if base_config.model_type not in SUPPORTED:
        raise ConversionError(
            f"{base}: unsupported architecture {base_config.model_type!r}: expected one of {sorted(SUPPORTED)}"
        )
    return base_config


# A tokenizer is one of these (tokenizer_config.json alone only configures one).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")


def load_tokenizer(base: str):
    """The tokenizer of a base (hub id or local dir), or None where it has none. A local
    directory without tokenizer files has none (transformers would make up a tokenizer of
    one token from its config alone)."""
    from transformers import AutoTokenizer

    local = Path(base).expanduser()
    if local.is_dir() and not any((local / name).is_file() for name in TOKENIZER_FILES):
        return None
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
    except Exception:
        return None
    return tokenizer if len(tokenizer) > 1 else None


def missing_tokenizer(base: str) -> ConversionError:
    return ConversionError(f"{base}: no tokenizer (none of {', '.join(TOKENIZER_FILES)}); copy "
                           f"the base model's tokenizer files into it")


def load_base(base: str, dtype: torch.dtype | None = None):
    """Load a dense base causal LM (hub id or local dir) and its tokenizer (None if absent)."""
    from transformers import AutoModelForCausalLM

    read_base_config(base)
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype or "auto")
    except Exception as err:  # safetensors / torch raise a zoo of types for bad files
        raise ConversionError(f"cannot load the weights of base model {base!r}: {_first_line(err)}") from err
    return model, load_tokenizer(base)


def _looks_like_path(base: str) -> bool:
    """A local path rather than a hub id (`org/name`): absolute, relative to `.`/`..`/`~`,
    or more than one `/`. An existing directory is always local."""
    return (base.startswith(("/", "./", "../", "~")) or base in (".", "..")
            or base.strip("/").count("/") > 1 or os.path.isdir(base))


def check_output_dir(out: Path, overwrite: bool) -> None:
    """An output directory may be new, empty, or (with `overwrite`) replaced; never a file."""
    if out.exists() and not out.is_dir():
        raise ConversionError(f"{out}: exists and is not a directory (choose another output path)")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConversionError(f"{out}: output directory exists and is not empty (pass --overwrite)")


def save_atomically(model, tokenizer, out: str | os.PathLike, overwrite: bool = False,
                    extra: dict[str, str] | None = None) -> Path:
    """Write to a temporary sibling directory, then rename: a failure leaves nothing behind.
    The result follows the user's umask (a shared cluster's teammates can read it).
    `extra`: more files (name -> text) written beside the model."""
    from l2a.files import follow_umask, held_temp_dir, remove_abandoned_temp_dirs

    out = Path(out)
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = temp_prefix(out)
    remove_abandoned_temp_dirs(out.parent, prefix)  # of a write to `out` that was killed
    with held_temp_dir(out.parent, prefix) as tmp:
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            for name, text in (extra or {}).items():
                (tmp / name).write_text(text)
            follow_umask(tmp)
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out


def temp_prefix(out: str | os.PathLike) -> str:
    """The name prefix of `save_atomically`'s temporary directory beside `out`."""
    return f".{Path(out).name}.tmp-"


def convert(base: str, out: str, init: str = "paper", overwrite: bool = False, dtype=None, **fields) -> Path:
    # Settings and paths first: the load of a large base takes minutes.
    check_output_dir(Path(out), overwrite)
    _l2a_config(read_base_config(base), init, dict(fields))
    if load_tokenizer(base) is None:  # a model nobody can feed text to
        raise missing_tokenizer(base)
    model, tokenizer = load_base(base, dtype)
    l2a_model = convert_model(model, init=init, **fields)
    return save_atomically(l2a_model, tokenizer, out, overwrite=overwrite)


def _parse_layers(text: str | None):
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m l2a.convert", description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="hub id or local directory of a Qwen2/Qwen2.5/Qwen3 model")
    ap.add_argument("--out", required=True, help="output directory (HF format, safetensors)")
    ap.add_argument("--init", choices=L2A_INIT_MODES, default="paper")
    ap.add_argument("--window", type=int, default=None, help="local sliding window W (default 4095)")
    ap.add_argument("--rope-theta", type=float, default=None)
    ap.add_argument("--max-position-embeddings", type=int, default=None)
    ap.add_argument("--router-tau", type=float, default=None)
    ap.add_argument("--layers", type=_parse_layers, default=None, help="L2A layer indices, e.g. 4,5,6 (default: all)")
    ap.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default="auto")
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    try:
        path = convert(
            args.base,
            args.out,
            init=args.init,
            overwrite=args.overwrite,
            dtype=dtype,
            window=args.window,
            rope_theta=args.rope_theta,
            max_position_embeddings=args.max_position_embeddings,
            router_tau=args.router_tau,
            layers=args.layers,
        )
    except ConversionError as err:
        text = str(err)
        field = text.split(":", 1)[0]
        flags = {"window": args.window, "rope_theta": args.rope_theta,
                 "max_position_embeddings": args.max_position_embeddings}
        if field in flags and (field == "window" or flags[field] is not None):
            text = "--" + text.replace("_", "-", field.count("_"))  # name the flag that set it
        elif field in ("rope_theta", "max_position_embeddings", "num_key_value_heads"):
            text = f"{args.base}: config.json: {text}"  # the base's own value
        print(f"l2a.convert: error: {text}", file=sys.stderr)
        return 2
    print(f"l2a.convert: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
