"""Sequence-packing data pipeline: sources -> tokens -> long-context mixture -> packed rows.

Public API:
    DataConfig             the validated ``data`` config group
    build_byte_tokenizer   offline byte-level tokenizer (tiny default)
    prepare_data           tokenize, mix and pack to disk (idempotent), print statistics
    build_dataloader       resumable, rank-disjoint iterator of packed batches
See docs/DATA.md. Names are imported on first use, so ``import train.data`` stays cheap
(no torch, transformers or datasets until needed).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ConfigError": "train.data.errors",
    "DataError": "train.data.errors",
    "DataConfig": "train.data.config",
    "SourceConfig": "train.data.config",
    "SyntheticConfig": "train.data.config",
    "build_byte_tokenizer": "train.data.tokenizer",
    "load_tokenizer": "train.data.tokenizer",
    "prepare_data": "train.data.pipeline",
    "PreparedData": "train.data.prepared",
    "IGNORE_INDEX": "train.data.prepared",
    "PackedDataLoader": "train.data.loader",
    "build_dataloader": "train.data.loader",
    "cu_seqlens_from_position_ids": "train.data.boundaries",
    "doc_ids_from_position_ids": "train.data.boundaries",
    "document_causal_mask": "train.data.boundaries",
    "SyntheticSample": "train.data.samples",
    "generate_sample": "train.data.synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'train.data' has no attribute {name!r}")


def __dir__():
    return __all__
