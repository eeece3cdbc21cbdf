"""`python -m eval`'s config (conf/eval_config.yaml + the `eval` group) as validated
dataclasses. Errors name the override (``eval.samples: must be > 0, got 0``).

The `eval` group is also what `train.eval` holds (the subset run during training), so
both are validated by :func:`build_eval` under their own path prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from l2a.validate import check_choice, check_l2a_fields, check_number, fail, item
from train.data.ruler import TASKS


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
class TeacherForcedConfig:
    """`eval.teacher_forced.*`: per sample, the gold answer's log-likelihood and token
    accuracy with the model reading prompt + answer (eval/teacher_forced.py): one forward
    per sample, no generation, a continuous score beside exact match."""

    enabled: bool = False
    # Per (task, length, depth) cell; null: eval.samples. The first eval.samples of them
    # are also generated and scored by exact match, the others are scored teacher-forced only.
    samples: int | None = None


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
    teacher_forced: TeacherForcedConfig = field(default_factory=TeacherForcedConfig)
    routing: bool = True  # L2A models: router sparsity per layer, position and task
    plots: bool = True

    def check(self, prefix: str = "eval") -> EvalConfig:
        for i, t in enumerate(self.tasks):
            if t not in TASKS:
                fail(item(f"{prefix}.tasks", i), f"unknown task (known: {', '.join(TASKS)})", t)
        if self.lengths is not None:
            if not self.lengths:
                fail(f"{prefix}.lengths", "must not be empty (null: automatic)")
            for i, n in enumerate(self.lengths):
                check_number(item(f"{prefix}.lengths", i), n, 1, integer=True)
        if not self.depths:
            fail(f"{prefix}.depths", "must not be empty")
        for i, d in enumerate(self.depths):
            check_number(item(f"{prefix}.depths", i), d, 0, 1)
        check_number(f"{prefix}.samples", self.samples, 1, integer=True)
        check_number(f"{prefix}.max_new_tokens", self.max_new_tokens, 1, integer=True,
                     allow_none=True)
        if not self.haystack:
            fail(f"{prefix}.haystack", "must be generated, noise or a path", self.haystack)
        tf = self.teacher_forced
        check_number(f"{prefix}.teacher_forced.samples", tf.samples, 1, integer=True,
                     allow_none=True)
        if tf.samples is not None and tf.samples < self.samples:
            fail(f"{prefix}.teacher_forced.samples", f"must be at least {prefix}.samples "
                 f"({self.samples}: every generated sample is also teacher-forced)", tf.samples)
        p = self.perplexity
        check_number(f"{prefix}.perplexity.rows", p.rows, 1, integer=True)
        check_number(f"{prefix}.perplexity.buckets", p.buckets, 1, integer=True)
        for i, n in enumerate(p.lengths or []):
            check_number(item(f"{prefix}.perplexity.lengths", i), n, 2, integer=True)
        return self

    def teacher_forced_samples(self) -> int:
        """Samples per (task, length, depth) cell scored teacher-forced (0: off)."""
        tf = self.teacher_forced
        return 0 if not tf.enabled else (tf.samples or self.samples)

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
                fail(item(f"{prefix}.lengths", i),
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
            fail("model.path", "set exactly one of model.path and model.random")
        if self.path is not None and not self.path.strip():
            fail("model.path", "must not be empty", self.path)
        check_choice("model.dtype", self.dtype, ("auto", "bf16", "fp32"))
        check_l2a_fields({"window": self.window}, lambda k: f"model.{k}")


def build_eval(raw, prefix: str = "eval") -> EvalConfig:
    from train.config import build

    return build(EvalConfig, raw, prefix).check(prefix)


def build_model_spec(raw) -> ModelSpec:
    from train.config import build

    return build(ModelSpec, raw, "model")
