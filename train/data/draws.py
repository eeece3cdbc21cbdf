"""Seeded draws shared by the synthetic tasks of the data pipeline (`train.data.synthetic`)
and the RULER-family tasks of the evaluation (`train.data.ruler`): the same keys, values
and words in both, so that one task family can be trained on and the other scored."""

from __future__ import annotations

from train.data.textgen import ADJECTIVES, NOUNS


def number(rng) -> str:
    """A seven-digit value (NIAH's "special magic number")."""
    return str(rng.randint(1_000_000, 9_999_999))


def word_key(rng) -> str:
    """A key such as ``quiet-river``."""
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


def distinct(make, rng, n: int) -> list[str]:
    """`n` distinct draws of ``make(rng)``, in draw order."""
    seen: list[str] = []
    while len(seen) < n:
        k = make(rng)
        if k not in seen:
            seen.append(k)
    return seen


def uuid(rng) -> str:
    h = "".join(rng.choice("0123456789abcdef") for _ in range(32))
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def pseudo_word(rng, syllables: int) -> str:
    """A pronounceable non-word of consonant-vowel syllables (never an English word's
    frequency prior)."""
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    return "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables))
