"""`python -m eval`'s config (conf/eval_config.yaml + the `eval` group) as validated
dataclasses. Errors name the override (``eval.samples: must be > 0, got 0``).

The `eval` group is also what `train.eval` holds (the subset run during training), so
both are validated by :func:`build_eval` under their own path prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from eval.errors import EvalError
from train.data.ruler import TASKS


def _fail(path: str, msg: str, value=None):
    raise EvalError(f"{path}: {msg}" + ("" if value is None else f", got {value!r}"))


@dataclass
class PerplexityConfig:
    """`eval.perplexity.*`: loss by context length and position on held-out text."""

    # generated (seeded pseudo-English) | a prepared data directory (its validation split) |
    # a text / JSON-lines file | null (skip perplexity)
    data: str | None = "generated"
    rows: int = 1  # sequences per length
    buckets: int = 8  # position buckets (equal widths over the length)
    lengths: list[int] | None = None  # null: eval.lengths


@dataclass
class EvalConfig:
    """`eval.*`: what to evaluate."""

    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    # Total tokens (prompt + generated, as RULER counts); null: 4096, 8192, ... up to the
    # model's max_position_embeddings.
    lengths: list[int] | None = None
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])  # NIAH
    samples: int = 1  # per (task, length, depth) cell
    seed: int = 0
    haystack: str = "generated"  # generated | noise | a text, JSON-lines or prepared-data path
    max_new_tokens: int | None = None  # null: RULER's per task (128 NIAH, 30 vt, 120 cwe, 50 fwe)
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)
    routing: bool = True  # L2A models: router sparsity per layer, position and task
    plots: bool = True

    def check(self, prefix: str = "eval") -> EvalConfig:
        for i, t in enumerate(self.tasks):
            if t not in TASKS:
                _fail(f"{prefix}.tasks[{i}]", f"unknown task (known: {', '.join(TASKS)})", t)
        if self.lengths is not None:
            if not self.lengths:
                _fail(f"{prefix}.lengths", "must not be empty (null: automatic)")
            for i, n in enumerate(self.lengths):
                if n <= 0:
                    _fail(f"{prefix}.lengths[{i}]", "must be > 0", n)
        for i, d in enumerate(self.depths):
            if not 0.0 <= d <= 1.0:
                _fail(f"{prefix}.depths[{i}]", "must be in [0, 1]", d)
        if not self.depths:
            _fail(f"{prefix}.depths", "must not be empty")
        if self.samples <= 0:
            _fail(f"{prefix}.samples", "must be > 0", self.samples)
        if self.max_new_tokens is not None and self.max_new_tokens <= 0:
            _fail(f"{prefix}.max_new_tokens", "must be > 0", self.max_new_tokens)
        if not self.haystack:
            _fail(f"{prefix}.haystack", "must be generated, noise or a path", self.haystack)
        p = self.perplexity
        if p.rows <= 0:
            _fail(f"{prefix}.perplexity.rows", "must be > 0", p.rows)
        if p.buckets <= 0:
            _fail(f"{prefix}.perplexity.buckets", "must be > 0", p.buckets)
        for i, n in enumerate(p.lengths or []):
            if n <= 1:
                _fail(f"{prefix}.perplexity.lengths[{i}]", "must be > 1", n)
        return self

    def resolve_lengths(self, max_context: int, prefix: str = "eval") -> list[int]:
        """The lengths to run; one above the model's context is an error."""
        if self.lengths is None:
            out, n = [], min(4096, max_context)
            while n <= max_context:
                out.append(n)
                n *= 2
            return out
        for i, n in enumerate(self.lengths):
            if n > max_context:
                _fail(f"{prefix}.lengths[{i}]",
                      f"{n} is above the model's context (max_position_embeddings {max_context})")
        return list(self.lengths)


@dataclass
class ModelSpec:
    """`model.*` of `python -m eval`: exactly one of `path` and `random`."""

    # An exported HF directory, a training checkpoint or run directory, or a hub id / local
    # path of a base (non-L2A) Qwen model.
    path: str | None = None
    # Random weights of a conf/model/<name>.yaml shape (timing: no download); L2A-converted
    # when `l2a`, with window `window`.
    random: str | None = None
    l2a: bool = True
    window: int = 4095
    dtype: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    device: str = "auto"  # auto | cpu | cuda | cuda:<i>
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.path is None) == (self.random is None):
            _fail("model.path", "set exactly one of model.path and model.random")
        if self.path is not None and not self.path.strip():
            _fail("model.path", "must not be empty", self.path)
        if self.dtype not in ("auto", "bf16", "fp32"):
            _fail("model.dtype", "must be one of auto, bf16, fp32", self.dtype)
        if self.window <= 0:
            _fail("model.window", "must be > 0", self.window)


def build_eval(raw, prefix: str = "eval") -> EvalConfig:
    from train.config import ConfigError, build

    try:
        return build(EvalConfig, raw, prefix).check(prefix)
    except ConfigError as e:
        raise EvalError(str(e)) from None


def build_model_spec(raw) -> ModelSpec:
    from train.config import ConfigError, build

    try:
        return build(ModelSpec, raw, "model")
    except ConfigError as e:
        raise EvalError(str(e)) from None
