"""Haystack filler for the synthetic tasks: one unit (a sentence, with its leading space)
at a time, deterministic for a seed.

`eval.haystack`:
- ``generated``: seeded pseudo-English (train/data/textgen.py), a fresh text per sample;
- ``noise``: RULER's repeated "The grass is green. ..." line;
- a path: a text file (``.txt``/``.md``), a JSON-lines file (its ``text`` fields) or a
  prepared data directory (its validation rows, decoded with the model's tokenizer). Like
  RULER's essays, every sample reads the same text from its start; a source shorter than
  the longest requested length is an error, not a text that silently repeats.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path

from eval.errors import EvalError
from train.data.ruler import NOISE, GeneratedHaystack

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


class Haystack:
    """`units(seed_parts)` -> an iterator of filler units (each ``" " + sentence``)."""

    def __init__(self, spec: str, tokenizer=None):
        self.spec = spec
        self.sentences: list[str] | None = None
        if spec in ("generated", "noise"):
            return
        self.sentences = split_sentences(_read_source(spec, tokenizer))
        if not self.sentences:
            raise EvalError(f"eval.haystack: {spec} holds no text")

    @property
    def finite(self) -> bool:
        return self.sentences is not None

    def units(self, seed_parts: tuple) -> Iterator[str]:
        if self.spec == "noise":
            return itertools.repeat(" " + NOISE)
        if self.spec == "generated":
            return GeneratedHaystack().units(seed_parts)
        return (" " + s for s in self.sentences)

    def check_length(self, encoder, tokens: int) -> None:
        """A finite source must hold at least `tokens` tokens (checked before anything runs)."""
        if not self.finite:
            return
        have = int(encoder.count([" ".join(self.sentences)])[0])
        if have < tokens:
            raise EvalError(
                f"eval.haystack: {self.spec} has {have} tokens, the longest length needs {tokens}"
            )


def _read_source(spec: str, tokenizer) -> str:
    path = Path(spec)
    if not path.exists():
        raise EvalError(f"eval.haystack: must be generated, noise or an existing path, got {spec!r}")
    if path.is_dir():
        if not (path / "meta.json").exists():
            raise EvalError(f"eval.haystack: {spec} is a directory but not prepared data (no meta.json)")
        return _prepared_text(path, tokenizer)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EvalError(f"eval.haystack: cannot read {spec} ({type(e).__name__})") from None
    if path.suffix in (".jsonl", ".json", ".ndjson"):
        texts = []
        for i, line in enumerate(raw.splitlines()):
            if not line.strip():
                continue
            try:
                texts.append(str(json.loads(line)["text"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise EvalError(f"eval.haystack: {spec} line {i + 1}: expected a JSON object with 'text'") from None
        return "\n".join(texts)
    return raw


def _prepared_text(path: Path, tokenizer, max_rows: int = 64) -> str:
    from train.data import DataError, PreparedData

    try:
        data = PreparedData.load(path)
        rows = data.split_indices("validation" if data.validation_sequences else "train")
    except DataError as e:
        raise EvalError(f"eval.haystack: {e}") from None
    if tokenizer is None:
        raise EvalError("eval.haystack: prepared data needs the model's tokenizer to decode")
    return "\n".join(tokenizer.decode(data.row(int(i))[0].tolist(), skip_special_tokens=True)
                     for i in rows[:max_rows])
