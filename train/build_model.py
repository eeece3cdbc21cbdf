"""The model a run trains: the dense base (hub id, local dir, or random weights), converted
to L2A once and cached, then loaded by every rank; plus its tokenizer.

Conversion runs at the start of a run (no separate step), on local rank 0 of each node, into
`model.cache_dir/<name>-<hash of the base's content and the settings that shape the converted
model>` (train/model_cache.py); a requeued job finds the cached copy. A base that is already
an L2A model is loaded as it is (train/l2a_base.py). Runtime switches (`l2a.attn_backend`,
...) are set on the loaded model, never in its config. Trainable parameters follow
`l2a.trainable.mark_trainable`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from l2a.errors import first_line
from train.config import ConfigError, RunConfig
from train.distributed import DistInfo, barrier, broadcast_object
from train.l2a_base import l2a_base_config
from train.model_cache import cached_model_dir  # noqa: F401  (re-exported for callers)


def _conversion_fields(cfg: RunConfig) -> dict:
    """The conversion settings (what shapes the converted model; runtime options are not)."""
    a = cfg.l2a
    return {"window": a.window, "router_tau": a.router_tau,
            "router_threshold": a.router_threshold, "layers": a.layers}


def runtime_options(cfg: RunConfig):
    """`l2a.*` runtime switches, for `model.l2a_runtime` (never saved with the model)."""
    from l2a.runtime import L2ARuntime

    a = cfg.l2a
    return L2ARuntime(attn_backend=a.attn_backend, routed_projections=a.routed_projections,
                      routed_rows=a.routed_rows, fused_elementwise=a.fused_elementwise)


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
    from l2a.convert import ConversionError, convert_model, load_base, missing_tokenizer

    m = cfg.model
    if m.base is None and not m.cache:
        from train.tiny_base import byte_tokenizer, qwen3_config, random_qwen3

        tokenizer = byte_tokenizer()
        config = qwen3_config(m.random_base, vocab_size=len(tokenizer))
        base = random_qwen3(config, seed=cfg.train.seed, device=device, dtype=dtype,
                            attn_implementation=None if cfg.l2a.enabled
                            else dense_attn_implementation(m.dense_attn_implementation, dtype))
    elif l2a_base_config(m.base) is not None:  # already L2A: trained further as it is
        model, tokenizer = _load_l2a_base(cfg, dtype)
        return model.to(device), tokenizer
    else:
        source = str(_base_dir_for_random(cfg)) if m.base is None else m.base
        try:
            base, tokenizer = load_base(source, dtype)
        except ConversionError as e:
            raise ConfigError(f"model.base: {e}") from None
        if tokenizer is None:
            raise ConfigError(f"model.base: {missing_tokenizer(source)}")
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


def _load_l2a_base(cfg: RunConfig, dtype: torch.dtype, **kwargs):
    """An L2A model given as `model.base` (a conversion or an export; train/l2a_base.py):
    loaded as it is, with the run's RoPE settings."""
    from transformers import AutoModelForCausalLM

    from l2a.convert import load_tokenizer, missing_tokenizer

    base = cfg.model.base
    tokenizer = load_tokenizer(base)
    if tokenizer is None:
        raise ConfigError(f"model.base: {missing_tokenizer(base)}")
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, **kwargs)
    except Exception as e:  # safetensors / json / transformers raise many types
        raise ConfigError(f"model.base: cannot load the L2A model {base} ({first_line(e, with_type=True)})") from None
    _set_rope(model, cfg.model.rope_theta, cfg.model.max_position_embeddings)
    return model, tokenizer


def _expected_l2a_config(cfg: RunConfig, source: str) -> dict:
    """The config a conversion of `source` with this run's settings gives (no weights read)."""
    from l2a.convert import conversion_config, read_base_config

    m = cfg.model
    return conversion_config(read_base_config(source), cfg.l2a.init, rope_theta=m.rope_theta,
                             max_position_embeddings=m.max_position_embeddings,
                             **_conversion_fields(cfg)).to_dict()


def _reuse_legacy_cache(cfg: RunConfig, path: Path, record: dict) -> bool:
    """A conversion cached under the previous key: moved to `path` if it still matches the
    base, else reported (it is converted again). True if it was reused."""
    import os

    from l2a.convert import ConversionError
    from l2a.runtime import LEGACY_RUNTIME_KEYS
    from train.model_cache import CONVERSION_RECORD, legacy_cache_matches, legacy_cached_model_dir

    legacy = legacy_cached_model_dir(cfg)
    if legacy == path or not (legacy / "config.json").is_file():
        return False
    source = Path(str(_base_dir_for_random(cfg)) if cfg.model.base is None else cfg.model.base)
    why = "it is a dense copy (cheap to make again)"
    if cfg.l2a.enabled and source.expanduser().is_dir():
        try:
            why = legacy_cache_matches(legacy, _expected_l2a_config(cfg, str(source)),
                                       source.expanduser())
        except ConversionError as e:
            why = str(e)
    if why is None:
        (legacy / CONVERSION_RECORD).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        config = json.loads((legacy / "config.json").read_text())
        for key in LEGACY_RUNTIME_KEYS:  # runtime switches are no longer part of a model
            config.pop(key, None)
        (legacy / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        try:
            os.replace(legacy, path)
        except OSError:  # another node moved it first
            return (path / "config.json").is_file()
        print(f"model.cache_dir: reusing {legacy.name} (cached under the previous key, it "
              f"matches the base) as {path.name}", flush=True)
        return True
    print(f"model.cache_dir: {legacy} was cached under the previous key and is not used "
          f"({why}); converting again (delete it to free its space)", flush=True)
    return False


def zero3_partitioned_loading(cfg: RunConfig, ds_config: dict | None):
    """The object that makes transformers' from_pretrained build the model under
    deepspeed.zero.Init (it must stay alive until the DeepSpeed engine exists), or None."""
    if ds_config is None or cfg.deepspeed.stage != 3 or not cfg.deepspeed.zero3_init:
        return None
    if not cfg.model.cache:
        return None  # built in memory and converted: needs the full weights on each rank
    from transformers.integrations.deepspeed import HfDeepSpeedConfig

    return HfDeepSpeedConfig(ds_config)


def _converted(cfg: RunConfig, dist: DistInfo, dtype: torch.dtype) -> Path:
    """Collective: the cache directory of this run's conversion, converted there first
    (by local rank 0 of each node) unless it is cached. Rank 0 names it for every rank."""
    from l2a.convert import save_atomically, temp_prefix
    from l2a.files import remove_abandoned_temp_dirs
    from train.model_cache import CONVERSION_RECORD, conversion_record

    named = None
    if dist.rank == 0:
        try:
            record = conversion_record(cfg)
            named = (record, str(cached_model_dir(cfg, record)), None)
        except ConfigError as e:  # every rank raises it, none waits for the others
            named = (None, None, str(e))
    record, path, error = broadcast_object(named)
    if error is not None:
        raise ConfigError(error)
    path = Path(path)
    if dist.local_rank == 0 and (path / "config.json").exists():
        # Another writer of this entry killed midway (its cache was made by someone else).
        remove_abandoned_temp_dirs(path.parent, temp_prefix(path))
    elif dist.local_rank == 0 and not _reuse_legacy_cache(cfg, path, record):
        # On CPU in the training dtype (bf16 for real runs: the hub weights are bf16);
        # the cached copy serves later runs of the same settings.
        model, tokenizer = _create(cfg, dtype, torch.device("cpu"))
        save_atomically(model, tokenizer, path, overwrite=True,
                        extra={CONVERSION_RECORD: json.dumps(record, indent=1, sort_keys=True) + "\n"})
        del model
    barrier()
    return path


def build_model(cfg: RunConfig, dist: DistInfo, dtype: torch.dtype, ds_config: dict | None = None):
    """Returns (model in train mode, tokenizer, directory it was loaded from or None, and
    the ZeRO-3 loading handle or None: see zero3_partitioned_loading)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import l2a  # noqa: F401  (registers the L2A classes with the Auto* factories)

    zero3 = None
    if not cfg.model.cache:
        model, tokenizer = _create(cfg, dtype, dist.device)
        path = None
    elif l2a_base_config(cfg.model.base) is not None:  # nothing to convert: load it as it is
        path = Path(cfg.model.base).expanduser().resolve()
        zero3 = zero3_partitioned_loading(cfg, ds_config)
        model, tokenizer = _load_l2a_base(cfg, dtype)
    else:
        path = _converted(cfg, dist, dtype)
        kwargs = {} if cfg.l2a.enabled else {
            "attn_implementation": dense_attn_implementation(cfg.model.dense_attn_implementation, dtype)}
        # Created before from_pretrained: transformers looks it up to partition on load.
        zero3 = zero3_partitioned_loading(cfg, ds_config)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(path)
        except Exception as e:  # safetensors / json / transformers raise many types
            raise ConfigError(f"model.cache_dir: the cached converted model {path} is unreadable "
                              f"({first_line(e, with_type=True)}); delete it (rm -r {path}) to convert again"
                              ) from None
    model.config.use_cache = False
    if cfg.l2a.enabled:  # how it runs: on the model, not in its config (never saved)
        model.l2a_runtime = runtime_options(cfg)
    model.train()
    return model, tokenizer, path, zero3
