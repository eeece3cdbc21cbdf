"""Where a run's converted model is cached, and when a cached one may be used.

`model.cache_dir/<name>-<key>`: the key hashes only what changes the converted model's files
(weights, config, tokenizer):

* the base model by its content, not its path: a local directory by the text of its
  config and tokenizer files and the names, sizes and modification times of its weight
  files (a base rebuilt in place with other layers, another width, or tokenizer files added
  later gets another key and is converted again); a hub id by the commit its files resolve
  to; a random base by its shape and seed;
* the conversion settings: `l2a.init`, `window`, `router_tau`, `router_threshold`, `layers`,
  `model.rope_theta`, `model.max_position_embeddings`.

Runtime policy (`l2a.attn_backend`, `l2a.dense_prob`, `l2a.routed_projections`,
`l2a.routed_rows`, `l2a.fused_elementwise`) is not in the key: changing it reuses the cached model. Each cache
directory holds `conversion.json`, the record its key was made from.

Caches written under the previous key (the base's path string plus runtime settings) are
found and reused when they still match the base (same config, no base file newer than the
cache), else reported once and converted again; never silently duplicated.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from train.config import ConfigError, RunConfig

KEY_VERSION = 2
CONVERSION_RECORD = "conversion.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
# Never part of what a model is.
_IGNORED_SUFFIXES = (".md", ".lock")
# Config keys that do not make two conversions different.
_NOT_IDENTITY = {"transformers_version", "dtype", "torch_dtype", "architectures", "model_type",
                 "use_cache", "_name_or_path", "auto_map", "l2a_attn_backend", "l2a_dense_prob",
                 "l2a_routed_projections", "l2a_fused_elementwise"}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _model_files(root: Path) -> list[Path]:
    """The files of a model directory, hidden ones (temporary dirs, .git, caches) aside."""
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(files)
                if not f.startswith(".") and not f.endswith(_IGNORED_SUFFIXES)]
    return out


def directory_fingerprint(root: Path) -> dict:
    """Relative path -> content hash (config, tokenizer and other small files) or
    [size, mtime_ns] (weight files: hashing gigabytes at every start would cost minutes)."""
    out = {}
    for path in _model_files(root):
        rel = str(path.relative_to(root))
        st = path.stat()
        out[rel] = ([st.st_size, st.st_mtime_ns] if path.name.endswith(WEIGHT_SUFFIXES)
                    else _sha256_file(path))
    return out


def _hub_revision(base: str) -> str:
    """The commit a hub id's files resolve to (from the local hub cache when offline)."""
    try:
        from huggingface_hub import hf_hub_download

        config = Path(hf_hub_download(base, "config.json"))
    except Exception as e:  # offline without a cached copy, unknown repo, ...
        lines = str(e).strip().splitlines()
        raise ConfigError(f"model.base: cannot resolve {base!r} on the hub "
                          f"({type(e).__name__}: {lines[0] if lines else ''})") from None
    return config.parent.name  # .../snapshots/<commit>/config.json


def base_identity(base: str) -> dict:
    local = Path(base).expanduser()
    if local.is_dir():
        return {"files": directory_fingerprint(local.resolve())}
    return {"hub": base, "revision": _hub_revision(base)}


def conversion_record(cfg: RunConfig) -> dict:
    """Everything that shapes the cached model's files, and nothing else."""
    m, a = cfg.model, cfg.l2a
    l2a = None
    if a.enabled:
        l2a = {"init": a.init, "window": a.window, "router_tau": a.router_tau,
               "router_threshold": a.router_threshold, "layers": a.layers}
    return {
        "base": base_identity(m.base) if m.base is not None else None,
        "random_base": m.random_base,
        "seed": cfg.train.seed if m.random_base is not None else None,
        "rope_theta": m.rope_theta,
        "max_position_embeddings": m.max_position_embeddings,
        "l2a": l2a,
        "version": KEY_VERSION,
    }


def _hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _stem(cfg: RunConfig) -> str:
    m = cfg.model
    return (m.base.rstrip("/").split("/")[-1] if m.base else "random") + (
        "-l2a" if cfg.l2a.enabled else "-dense")


def cache_root(cfg: RunConfig) -> Path:
    return Path(cfg.model.cache_dir).expanduser().resolve()


def cached_model_dir(cfg: RunConfig, record: dict | None = None) -> Path:
    record = conversion_record(cfg) if record is None else record
    return cache_root(cfg) / f"{_stem(cfg)}-{_hash(record)}"


def legacy_cached_model_dir(cfg: RunConfig) -> Path:
    """Where the previous key (version 1: the base's path string, runtime settings in)
    put the same conversion."""
    m, a = cfg.model, cfg.l2a
    spec = {
        "base": m.base,
        "random_base": m.random_base,
        "seed": cfg.train.seed if m.random_base is not None else None,
        "rope_theta": m.rope_theta,
        "max_position_embeddings": m.max_position_embeddings,
        "l2a": ({"init": a.init, "window": a.window, "router_tau": a.router_tau,
                 "router_threshold": a.router_threshold, "dense_prob": a.dense_prob,
                 "layers": a.layers, "attn_backend": a.attn_backend} if a.enabled else None),
        "version": 1,
    }
    return cache_root(cfg) / f"{_stem(cfg)}-{_hash(spec)}"


def _identity(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in _NOT_IDENTITY}


def legacy_cache_matches(legacy: Path, expected_config: dict, base_dir: Path) -> str | None:
    """None if the cache at `legacy` is what converting `base_dir` now would give (same
    identity fields of the config, no file of the base newer than the cache), else why not."""
    try:
        cached = json.loads((legacy / "config.json").read_text())
    except (OSError, ValueError):
        return "its config.json is unreadable"
    have, want = _identity(cached), _identity(expected_config)
    differ = sorted(k for k in set(have) & set(want) if have[k] != want[k])
    if differ:
        return f"its {differ[0]} is {have[differ[0]]!r}, the base now gives {want[differ[0]]!r}"
    made = (legacy / "config.json").stat().st_mtime_ns
    newer = [p.name for p in _model_files(base_dir) if p.stat().st_mtime_ns > made]
    if newer:
        return f"the base's {newer[0]} changed after it was converted"
    return None
