"""Configuration of the data pipeline (the Hydra ``data`` group).

Every dataclass validates itself in ``__post_init__``; errors name the override path
(``data.sources[1].weight: must be >= 0, got -1``) so a user can fix the command line.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from l2a.errors import ConfigError
from l2a.validate import check_bool, check_choice, check_known_keys, check_number, fail, item
from train.data.task_names import EVAL_FORMAT_TASKS

SOURCE_TYPES = ("auto", "hub", "jsonl", "parquet", "text", "arrow", "generated", "files")
LOCAL_SUFFIXES = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".arrow": "arrow",
}
BYTE_TOKENIZER_NAME = "byte"  # data.tokenizer / model value meaning build_byte_tokenizer()
LONG_DOC_POLICIES = ("split", "truncate", "drop")
PACKING_STRATEGIES = ("bfd", "greedy", "concat")
SAMPLE_BY = ("document", "paragraph", "line")
SYNTHETIC_TASKS = (
    "passkey",
    "niah_single",
    "niah_multikey",
    "niah_multivalue",
    "niah_multiquery",
    "kv_retrieval",
    "variable_tracking",
    "common_words",
    *EVAL_FORMAT_TASKS,  # the evaluation suite's own format (train/data/eval_format.py)
)


class _FromDict:
    """``from_dict`` for nested config dataclasses, rejecting unknown keys by path."""

    _path = "data"

    @classmethod
    def from_dict(cls, values: dict | None = None, path: str | None = None, **kwargs):
        path = path or cls._path
        merged = dict(values or {})
        merged.update(kwargs)
        known = {
            f.name: f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")
        }
        check_known_keys(path, merged, known)
        nested = getattr(cls, "_nested", {})
        lists = getattr(cls, "_nested_lists", {})
        args = {}
        for key, value in merged.items():
            if key in nested and isinstance(value, dict):
                value = nested[key]().from_dict(value, path=f"{path}.{key}")
            elif key in lists:
                if value is None:
                    value = []
                if not isinstance(value, (list, tuple)):
                    fail(f"{path}.{key}", f"must be a list, got {type(value).__name__}")
                value = [
                    lists[key]().from_dict(v, path=item(f"{path}.{key}", i))
                    if isinstance(v, dict)
                    else v
                    for i, v in enumerate(value)
                ]
            args[key] = value
        obj = cls(**args, _path=path)
        return obj

    def to_dict(self) -> dict:
        return {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if not f.name.startswith("_")
        }


def _plain(value: Any) -> Any:
    if isinstance(value, _FromDict):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@dataclass
class GeneratedTextConfig(_FromDict):
    """Pseudo-English documents made offline from a seed (``type: generated`` sources)."""

    num_docs: int = 1000
    min_words: int = 8
    max_words: int = 400
    _path: str = field(default="data.sources.<i>.generated", repr=False, compare=False)

    def __post_init__(self):
        p = self._path
        check_number(f"{p}.num_docs", self.num_docs, 1, integer=True)
        check_number(f"{p}.min_words", self.min_words, 1, integer=True)
        check_number(f"{p}.max_words", self.max_words, self.min_words, integer=True)


@dataclass
class FilesConfig(_FromDict):
    """A tree of text files, one document per file (``type: files``; train/data/file_corpus.py).

    ``include`` / ``exclude``: fnmatch patterns on the path relative to the root (``*``
    also matches ``/``). ``holdout``: the fraction of files held out for validation, chosen
    by a hash of the relative path; the source's ``split`` (train | validation | all) picks
    the side. ``dedup``: files with the same content are read once (the first path in
    sorted order keeps them). Files over ``max_file_bytes`` and whitespace-only files are
    skipped; ``.gz`` files are decompressed.
    """

    include: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=list)
    holdout: float = 0.0
    dedup: bool = True
    max_file_bytes: int | None = 1 << 20
    _path: str = field(default="data.sources.<i>.files", repr=False, compare=False)

    def __post_init__(self):
        p = self._path
        for key in ("include", "exclude"):
            value = getattr(self, key)
            if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, str) and v for v in value
            ):
                fail(f"{p}.{key}", f"must be a list of glob patterns, got {value!r}")
            setattr(self, key, list(value))
        if not self.include:
            fail(f"{p}.include", "must name at least one pattern")
        check_number(f"{p}.holdout", self.holdout, 0.0, 1.0, high_open=True)
        check_bool(f"{p}.dedup", self.dedup)
        check_number(f"{p}.max_file_bytes", self.max_file_bytes, 1, integer=True, allow_none=True)


FILE_SPLITS = ("train", "validation", "all")


@dataclass
class SourceConfig(_FromDict):
    """One corpus of the mixture: a hub dataset id, local file(s)/glob/directory, or generated."""

    path: str | None = None
    name: str | None = None
    type: str = "auto"
    text_field: str = "text"
    weight: float = 1.0
    split: str = "train"
    streaming: bool = False
    short: bool = False
    subset: str | None = None
    data_dir: str | None = None
    revision: str | None = None
    sample_by: str = "document"
    max_docs: int | None = None
    max_tokens: int | None = None
    generated: GeneratedTextConfig | dict | None = None
    files: FilesConfig | dict | None = None
    _path: str = field(default="data.sources.<i>", repr=False, compare=False)
    _nested = {"generated": lambda: GeneratedTextConfig, "files": lambda: FilesConfig}

    def __post_init__(self):
        p = self._path
        check_choice(f"{p}.type", self.type, SOURCE_TYPES)
        if self.type == "generated":
            if isinstance(self.generated, dict) or self.generated is None:
                self.generated = GeneratedTextConfig.from_dict(
                    self.generated or {}, path=f"{p}.generated"
                )
            self.name = self.name or "generated"
        elif self.type == "files":
            if not self.path or not isinstance(self.path, str):
                fail(f"{p}.path", f"must be a directory or python:<sysconfig path>, got {self.path!r}")
            if isinstance(self.files, dict) or self.files is None:
                self.files = FilesConfig.from_dict(self.files or {}, path=f"{p}.files")
            check_choice(f"{p}.split", self.split, FILE_SPLITS)
            self.name = self.name or _default_name(self.path.replace("python:", ""))
        else:
            if not self.path or not isinstance(self.path, str):
                fail(f"{p}.path", f"must be a hub dataset id or a local path, got {self.path!r}")
            if self.type == "auto":
                self.type = infer_source_type(self.path, f"{p}.type")
            self.name = self.name or _default_name(self.path)
        if not isinstance(self.text_field, str) or not self.text_field:
            fail(f"{p}.text_field", f"must be a non-empty string, got {self.text_field!r}")
        check_number(f"{p}.weight", self.weight, 0.0)
        check_bool(f"{p}.streaming", self.streaming)
        check_bool(f"{p}.short", self.short)
        check_choice(f"{p}.sample_by", self.sample_by, SAMPLE_BY)
        check_number(f"{p}.max_docs", self.max_docs, 1, integer=True, allow_none=True)
        check_number(f"{p}.max_tokens", self.max_tokens, 1, integer=True, allow_none=True)
        if self.streaming and self.type == "generated":
            fail(f"{p}.streaming", "generated sources are made in memory; set streaming: false")
        if self.streaming and self.type == "files":
            fail(f"{p}.streaming", "files sources are read into the cache; set streaming: false")
        if self.files is not None and self.type != "files":
            fail(f"{p}.files", f"only for type: files, got type {self.type!r}")


def infer_source_type(path: str, where: str = "data.sources.<i>.type") -> str:
    """``auto`` source type: by suffix for local files, a directory's files, else a hub id."""
    base = path.rstrip("/")
    for suffix, kind in LOCAL_SUFFIXES.items():
        if base.endswith(suffix):
            return kind
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, f)) for f in ("state.json", "dataset_dict.json")):
            return "arrow"  # a `Dataset.save_to_disk` directory
        kinds = {LOCAL_SUFFIXES.get(os.path.splitext(f)[1]) for f in os.listdir(path)} - {None}
        if len(kinds) == 1:
            return kinds.pop()
        raise ConfigError(
            f"{where}: cannot infer the type of directory {path} "
            f"(found {sorted(kinds) or 'no known files'}); set type explicitly"
        )
    if os.path.exists(path) or any(ch in path for ch in "*?["):
        raise ConfigError(f"{where}: cannot infer the type of {path}; set type explicitly")
    return "hub"


def _default_name(path: str) -> str:
    base = os.path.basename(path.rstrip("/")) or path
    for suffix in LOCAL_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base.replace("*", "all") or "source"


@dataclass
class SyntheticConfig(_FromDict):
    """Seeded RULER-style long-context tasks (see ``train.data.synthetic``)."""

    enabled: bool = False
    tasks: list[str] = field(
        default_factory=lambda: ["passkey", "niah_multikey", "kv_retrieval", "variable_tracking"]
    )
    num_samples: int = 1000
    min_tokens: int = 128
    max_tokens: int = 512
    weight: float = 1.0
    short: bool = False
    _path: str = field(default="data.synthetic", repr=False, compare=False)

    def __post_init__(self):
        p = self._path
        check_bool(f"{p}.enabled", self.enabled)
        if not isinstance(self.tasks, (list, tuple)) or not self.tasks:
            fail(f"{p}.tasks", f"must be a non-empty list, got {self.tasks!r}")
        for i, task in enumerate(self.tasks):
            check_choice(item(f"{p}.tasks", i), task, SYNTHETIC_TASKS)
        self.tasks = list(self.tasks)
        check_number(f"{p}.num_samples", self.num_samples, 1, integer=True)
        check_number(f"{p}.min_tokens", self.min_tokens, 64, integer=True)
        check_number(f"{p}.max_tokens", self.max_tokens, self.min_tokens, integer=True)
        check_number(f"{p}.weight", self.weight, 0.0)
        check_bool(f"{p}.short", self.short)


@dataclass
class UpsampleLongConfig(_FromDict):
    """Per-source upsampling of long documents, keeping each source's token share."""

    min_tokens: int = 0
    factor: float = 1.0
    _path: str = field(default="data.upsample_long", repr=False, compare=False)

    def __post_init__(self):
        check_number(f"{self._path}.min_tokens", self.min_tokens, 0, integer=True)
        check_number(f"{self._path}.factor", self.factor, 1.0)

    @property
    def active(self) -> bool:
        return self.factor > 1.0 and self.min_tokens > 0


@dataclass
class PackingConfig(_FromDict):
    """How documents are put into sequences of ``seq_len`` tokens."""

    strategy: str = "bfd"
    buffer_sequences: int = 64
    _path: str = field(default="data.packing", repr=False, compare=False)

    def __post_init__(self):
        check_choice(f"{self._path}.strategy", self.strategy, PACKING_STRATEGIES)
        check_number(f"{self._path}.buffer_sequences", self.buffer_sequences, 1, integer=True)


@dataclass
class DataConfig(_FromDict):
    """The ``data`` group. See docs/DATA.md for every field."""

    seq_len: int = 512
    sources: list[SourceConfig] = field(default_factory=list)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    tokenizer: str | None = None
    prepared_dir: str | None = None
    cache_dir: str = ".cache/data/datasets"
    num_proc: int = 1
    max_bad_records: int = 0
    long_doc_policy: str = "split"
    upsample_long: UpsampleLongConfig = field(default_factory=UpsampleLongConfig)
    short_share: float | None = None
    num_tokens: int | None = None
    packing: PackingConfig = field(default_factory=PackingConfig)
    validation_sequences: int = 0
    parse_special_tokens: bool = False
    seed: int | None = None
    _path: str = field(default="data", repr=False, compare=False)
    _nested = {
        "synthetic": lambda: SyntheticConfig,
        "upsample_long": lambda: UpsampleLongConfig,
        "packing": lambda: PackingConfig,
    }
    _nested_lists = {"sources": lambda: SourceConfig}

    def __post_init__(self):
        p = self._path
        check_number(f"{p}.seq_len", self.seq_len, 8, integer=True)
        for key, cls in (
            ("synthetic", SyntheticConfig),
            ("upsample_long", UpsampleLongConfig),
            ("packing", PackingConfig),
        ):
            value = getattr(self, key)
            if isinstance(value, dict):
                setattr(self, key, cls.from_dict(value, path=f"{p}.{key}"))
            elif not isinstance(value, cls):
                fail(f"{p}.{key}", f"must be a mapping, got {value!r}")
        if not isinstance(self.sources, (list, tuple)):
            fail(f"{p}.sources", f"must be a list, got {type(self.sources).__name__}")
        self.sources = [
            SourceConfig.from_dict(s, path=item(f"{p}.sources", i)) if isinstance(s, dict) else s
            for i, s in enumerate(self.sources)
        ]
        for i, s in enumerate(self.sources):
            if not isinstance(s, SourceConfig):
                fail(item(f"{p}.sources", i), f"must be a mapping, got {s!r}")
        names = [s.name for s in self.sources] + (["synthetic"] if self.synthetic.enabled else [])
        for i, name in enumerate(names):
            if name in names[:i]:
                fail(
                    f"{item(p + '.sources', i)}.name", f"duplicate source name {name!r}; set distinct names"
                )
        if not names:
            fail(
                f"{p}.sources",
                "no data: give at least one source or set data.synthetic.enabled=true",
            )
        if self.tokenizer is not None and not isinstance(self.tokenizer, str):
            fail(f"{p}.tokenizer", f"must be a path, a hub id or 'byte', got {self.tokenizer!r}")
        check_number(f"{p}.num_proc", self.num_proc, 1, integer=True)
        check_number(f"{p}.max_bad_records", self.max_bad_records, 0, integer=True)
        check_choice(f"{p}.long_doc_policy", self.long_doc_policy, LONG_DOC_POLICIES)
        check_number(f"{p}.short_share", self.short_share, 0.0, 1.0, allow_none=True, high_open=True)
        check_number(f"{p}.num_tokens", self.num_tokens, 1, integer=True, allow_none=True)
        check_number(f"{p}.validation_sequences", self.validation_sequences, 0, integer=True)
        check_bool(f"{p}.parse_special_tokens", self.parse_special_tokens)
        check_number(f"{p}.seed", self.seed, 0, integer=True, allow_none=True)
        weights = self.source_weights()
        if sum(weights.values()) <= 0:
            fail(f"{p}.sources", "all source weights are 0")
        if self.short_share is not None:
            short = [n for n, s in self.source_short().items() if s and weights[n] > 0]
            long_ = [n for n, s in self.source_short().items() if not s and weights[n] > 0]
            if self.short_share > 0 and not short:
                fail(f"{p}.short_share", f"is {self.short_share} but no source has short: true")
            if not long_:
                fail(f"{p}.short_share", "is set but every source has short: true")

    def source_weights(self) -> dict[str, float]:
        weights = {s.name: float(s.weight) for s in self.sources}
        if self.synthetic.enabled:
            weights["synthetic"] = float(self.synthetic.weight)
        return weights

    def source_short(self) -> dict[str, bool]:
        short = {s.name: s.short for s in self.sources}
        if self.synthetic.enabled:
            short["synthetic"] = self.synthetic.short
        return short

    def fingerprint_dict(self) -> dict:
        """The settings that change the prepared output (not where it goes or how fast)."""
        d = self.to_dict()
        for key in ("prepared_dir", "cache_dir", "num_proc", "validation_sequences"):
            d.pop(key)
        return d
