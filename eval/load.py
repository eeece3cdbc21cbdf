"""The model under evaluation, from any of: an exported HF directory (L2A or dense), a
training checkpoint or run directory (consolidated like `python -m train.export`, in
memory), a hub id / local path of a dense base model, or random weights of a
conf/model shape (timing). Anything else: one-line EvalError."""

from __future__ import annotations

from pathlib import Path

import torch

from eval.config import ModelSpec
from eval.errors import EvalError
from l2a.errors import first_line

CONF_MODEL = Path(__file__).resolve().parent.parent / "conf" / "model"


def pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def pick_dtype(spec: str, device: torch.device) -> torch.dtype:
    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[spec]


def is_l2a(model) -> bool:
    return str(getattr(model.config, "model_type", "")).startswith("l2a_")


def _is_checkpoint(path: Path) -> bool:
    from train.checkpoint import DS_TAG

    return path.is_dir() and ((path / DS_TAG).exists() or (path / "checkpoints").is_dir()
                              or (path / "complete").exists() or path.name.startswith("step_"))


def _from_path(path: str, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    import l2a  # noqa: F401  (registers the L2A model types)

    local = Path(path)
    if _is_checkpoint(local):
        from train.checkpoint import CheckpointError
        from train.export import load_checkpoint_model

        try:
            model, tokenizer, _ = load_checkpoint_model(local)
        except (CheckpointError, OSError, ValueError) as e:
            raise EvalError(f"model.path: {first_line(e)}") from None
        return model.to(dtype), tokenizer
    looks_local = path.startswith(("/", "./", "../", "~")) or path.strip("/").count("/") > 1
    if looks_local and not local.expanduser().exists():  # else the hub's repo-id complaint
        raise EvalError(f"model.path: {path}: no such file or directory")
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:  # OSError, ValueError, JSON errors: not a model
        if not local.expanduser().exists():  # a mistyped local path reads like a hub id
            raise EvalError(f"model.path: {path}: no such local directory, and not a model "
                            f"on the hub ({first_line(e)})") from None
        raise EvalError(f"model.path: {path} is not a model ({first_line(e)})") from None
    if not str(config.model_type).startswith(("qwen2", "qwen3", "l2a_")):
        raise EvalError(f"model.path: {path}: unsupported model type {config.model_type!r} "
                        "(Qwen2 / Qwen2.5 / Qwen3 or their L2A versions)")
    try:
        kwargs = {} if str(config.model_type).startswith("l2a_") else {"attn_implementation": "sdpa"}
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # safetensors / torch raise many types for bad files
        raise EvalError(f"model.path: cannot load {path} ({first_line(e)})") from None
    return model, tokenizer


def _random(spec: ModelSpec, dtype: torch.dtype, device: torch.device):
    """A random-weight model of conf/model/<spec.random>.yaml's shape, built on `device`
    (the byte tokenizer: lengths are then bytes)."""
    from omegaconf import OmegaConf

    from train.tiny_base import byte_tokenizer, qwen3_config, random_qwen3

    file = CONF_MODEL / f"{spec.random}.yaml"
    if not file.exists():
        known = ", ".join(sorted(p.stem for p in CONF_MODEL.glob("*.yaml")))
        raise EvalError(f"model.random: no conf/model/{spec.random}.yaml (known: {known})")
    m = OmegaConf.to_container(OmegaConf.load(file), resolve=False)
    if not m.get("random_base"):
        raise EvalError(f"model.random: conf/model/{spec.random}.yaml has no random_base shape")
    tokenizer = byte_tokenizer()
    config = qwen3_config(m["random_base"], vocab_size=len(tokenizer), rope_theta=m.get("rope_theta"),
                          max_position_embeddings=m.get("max_position_embeddings"))
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    model = random_qwen3(config, seed=spec.seed, device=device, dtype=dtype,
                         attn_implementation=None if spec.l2a else "sdpa")
    if spec.l2a:
        from l2a.convert import ConversionError, convert_model

        context = config.max_position_embeddings
        if spec.window > context:  # the default window (4095) is the 128K recipe's
            raise EvalError(f"model.window: {spec.window} is above the context of "
                            f"conf/model/{spec.random}.yaml (max_position_embeddings "
                            f"{context}); set model.window <= {context}")
        try:
            model = convert_model(model, init="paper", window=spec.window)
        except ConversionError as e:
            raise EvalError(f"model.random: {spec.random}: {e}") from None
    return model, tokenizer


def load_model(spec: ModelSpec):
    """-> (model in eval mode on its device, tokenizer)."""
    device = pick_device(spec.device)
    dtype = pick_dtype(spec.dtype, device)
    if spec.random is not None:
        model, tokenizer = _random(spec, dtype, device)
    else:
        model, tokenizer = _from_path(spec.path, dtype)
    model.to(device).eval()
    model.config.use_cache = True
    return model, tokenizer


def max_context(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 0) or 0) or 1 << 30
