"""The model a run trains: the dense base (hub id, local dir, or random weights), converted
to L2A once and cached, then loaded by every rank; plus its tokenizer.

Conversion runs at the start of a run (no separate step), on local rank 0 of each node, into
`model.cache_dir/<name>-<hash of everything that shapes the weights>`; a requeued job finds
the cached copy. Trainable parameters follow `l2a.trainable.mark_trainable`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from l2a.errors import first_line
from train.config import ConfigError, RunConfig
from train.distributed import DistInfo, barrier


def _first_line(err: BaseException) -> str:
    return first_line(err, with_type=True)


def _conversion_fields(cfg: RunConfig) -> dict:
    a = cfg.l2a
    return {
        "window": a.window,
        "router_tau": a.router_tau,
        "router_threshold": a.router_threshold,
        "dense_prob": a.dense_prob,
        "layers": a.layers,
        "attn_backend": a.attn_backend,
    }


def cache_key(cfg: RunConfig) -> str:
    m = cfg.model
    spec = {
        "base": m.base,
        "random_base": m.random_base,
        "seed": cfg.train.seed if m.random_base is not None else None,
        "rope_theta": m.rope_theta,
        "max_position_embeddings": m.max_position_embeddings,
        "l2a": ({"init": cfg.l2a.init, **_conversion_fields(cfg)} if cfg.l2a.enabled else None),
        "version": 1,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def cached_model_dir(cfg: RunConfig) -> Path:
    m = cfg.model
    stem = (m.base.rstrip("/").split("/")[-1] if m.base else "random") + (
        "-l2a" if cfg.l2a.enabled else "-dense"
    )
    return Path(m.cache_dir).expanduser().resolve() / f"{stem}-{cache_key(cfg)}"


def _base_dir_for_random(cfg: RunConfig) -> Path:
    from train.tiny_base import build_tiny_base

    spec = json.dumps({"shape": cfg.model.random_base, "seed": cfg.train.seed}, sort_keys=True)
    key = hashlib.sha256(spec.encode()).hexdigest()[:12]
    out = Path(cfg.model.cache_dir).expanduser().resolve() / f"random-base-{key}"
    return build_tiny_base(out, shape=cfg.model.random_base, seed=cfg.train.seed)


def dense_attn_implementation(name: str, dtype: torch.dtype) -> str:
    """`model.dense_attn_implementation`, with `auto` resolved: FlashAttention-4 where it
    runs (the fastest dense baseline on Hopper / Blackwell), else SDPA (cuDNN on H100/H200
    when the caller prefers it, as bench.train_throughput does)."""
    if name != "auto":
        return name
    from kernels.backends import FA4_DTYPES, fa4_installed

    if (
        torch.cuda.is_available()
        and torch.cuda.get_device_capability()[0] in (9, 10)
        and dtype in FA4_DTYPES
        and fa4_installed()
    ):
        return "flash_attention_4"
    return "sdpa"


def _set_rope(model, rope_theta: float | None, max_pos: int | None) -> None:
    """Long-context RoPE on a loaded dense model (the L2A conversion does this itself)."""
    if rope_theta is None and max_pos is None:
        return
    config = model.config
    if rope_theta is not None:
        rope = dict(getattr(config, "rope_parameters", None) or {"rope_type": "default"})
        rope["rope_theta"] = float(rope_theta)
        config.rope_parameters = rope
    if max_pos is not None:
        config.max_position_embeddings = int(max_pos)
    device = next(model.parameters()).device
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config).to(device)


def _create(cfg: RunConfig, dtype: torch.dtype, device: torch.device):
    """Base -> (L2A) model and tokenizer, in memory."""
    from l2a.convert import ConversionError, convert_model, load_base

    m = cfg.model
    if m.base is None and not m.cache:
        from train.tiny_base import byte_tokenizer, qwen3_config, random_qwen3

        tokenizer = byte_tokenizer()
        config = qwen3_config(m.random_base, vocab_size=len(tokenizer))
        base = random_qwen3(config, seed=cfg.train.seed, device=device, dtype=dtype,
                            attn_implementation=None if cfg.l2a.enabled
                            else dense_attn_implementation(m.dense_attn_implementation, dtype))
    else:
        source = str(_base_dir_for_random(cfg)) if m.base is None else m.base
        try:
            base, tokenizer = load_base(source, dtype)
        except ConversionError as e:
            raise ConfigError(f"model.base: {e}") from None
        if tokenizer is None:
            raise ConfigError(f"model.base: no tokenizer found with {source!r}")
    if not cfg.l2a.enabled:
        _set_rope(base, m.rope_theta, m.max_position_embeddings)
        return base, tokenizer
    try:
        model = convert_model(base, init=cfg.l2a.init, rope_theta=m.rope_theta,
                              max_position_embeddings=m.max_position_embeddings,
                              **_conversion_fields(cfg))
    except ConversionError as e:
        text = str(e)  # "window: ..." names l2a.window
        raise ConfigError(f"l2a.{text}" if text.startswith("window:") else f"l2a: {text}") from None
    return model, tokenizer


def zero3_partitioned_loading(cfg: RunConfig, ds_config: dict | None):
    """The object that makes transformers' from_pretrained build the model under
    deepspeed.zero.Init (it must stay alive until the DeepSpeed engine exists), or None."""
    if ds_config is None or cfg.deepspeed.stage != 3 or not cfg.deepspeed.zero3_init:
        return None
    if not cfg.model.cache:
        return None  # built in memory and converted: needs the full weights on each rank
    from transformers.integrations.deepspeed import HfDeepSpeedConfig

    return HfDeepSpeedConfig(ds_config)


def build_model(cfg: RunConfig, dist: DistInfo, dtype: torch.dtype, ds_config: dict | None = None):
    """Returns (model in train mode, tokenizer, directory it was loaded from or None, and
    the ZeRO-3 loading handle or None: see zero3_partitioned_loading)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import l2a  # noqa: F401  (registers the L2A classes with the Auto* factories)
    from l2a.convert import save_atomically

    zero3 = None
    if not cfg.model.cache:
        model, tokenizer = _create(cfg, dtype, dist.device)
        path = None
    else:
        path = cached_model_dir(cfg)
        if dist.local_rank == 0 and not (path / "config.json").exists():
            # On CPU in the training dtype (bf16 for real runs: the hub weights are bf16);
            # the cached copy serves later runs of the same settings.
            model, tokenizer = _create(cfg, dtype, torch.device("cpu"))
            save_atomically(model, tokenizer, path, overwrite=True)
            del model
        barrier()
        kwargs = {} if cfg.l2a.enabled else {
            "attn_implementation": dense_attn_implementation(cfg.model.dense_attn_implementation, dtype)}
        # Created before from_pretrained: transformers looks it up to partition on load.
        zero3 = zero3_partitioned_loading(cfg, ds_config)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as e:  # safetensors / json / transformers raise many types
            raise ConfigError(f"model.cache_dir: the cached converted model {path} is unreadable "
                              f"({_first_line(e)}); delete it (rm -r {path}) to convert again"
                              ) from None
    model.config.use_cache = False
    if cfg.l2a.enabled:  # a runtime switch, not a conversion setting (not in the cache key)
        model.config.l2a_routed_projections = cfg.l2a.routed_projections
        model.config.l2a_fused_elementwise = cfg.l2a.fused_elementwise
    model.train()
    return model, tokenizer, path, zero3
