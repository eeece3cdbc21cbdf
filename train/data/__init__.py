"""Sequence-packing data pipeline: sources -> tokens -> long-context mixture -> packed rows.

Public API:
    DataConfig             the validated ``data`` config group
    build_byte_tokenizer   offline byte-level tokenizer (tiny default)
    prepare_data           tokenize, mix and pack to disk (idempotent), print statistics
    build_dataloader       resumable, rank-disjoint iterator of packed batches
See docs/DATA.md.
"""

from train.data.boundaries import (
    cu_seqlens_from_position_ids,
    doc_ids_from_position_ids,
    document_causal_mask,
)
from train.data.config import DataConfig, SourceConfig, SyntheticConfig
from train.data.errors import ConfigError, DataError
from train.data.loader import PackedDataLoader, build_dataloader
from train.data.pipeline import prepare_data
from train.data.prepared import IGNORE_INDEX, PreparedData
from train.data.synthetic import SyntheticSample, generate_sample
from train.data.tokenizer import build_byte_tokenizer, load_tokenizer

__all__ = [
    "ConfigError",
    "DataConfig",
    "DataError",
    "IGNORE_INDEX",
    "PackedDataLoader",
    "PreparedData",
    "SourceConfig",
    "SyntheticConfig",
    "SyntheticSample",
    "build_byte_tokenizer",
    "build_dataloader",
    "cu_seqlens_from_position_ids",
    "doc_ids_from_position_ids",
    "document_causal_mask",
    "generate_sample",
    "load_tokenizer",
    "prepare_data",
]
