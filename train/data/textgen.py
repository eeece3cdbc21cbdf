"""Seeded pseudo-English text, made offline: the tiny default's corpus and the haystack
filler of the synthetic tasks. A small grammar over a fixed vocabulary gives text with
real structure (agreement, recurring phrases) that a tiny model can learn.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random

DETERMINERS = ["the", "a", "every", "this", "that", "one", "some", "no"]
ADJECTIVES = (
    "old new small large quiet bright dark green blue red golden silver early late quick slow "
    "gentle strange simple careful ancient modern distant hidden open narrow wide heavy light "
    "warm cold wet dry tall short rare common clever patient brave busy empty full"
).split()
NOUNS = (
    "river garden city forest teacher student engine window mountain letter market village "
    "bridge library story machine painter doctor farmer island ocean kitchen station signal "
    "lantern harbor valley castle road tower voice problem answer memory journey winter summer "
    "morning evening clock mirror school field ship bird horse tree stone song idea child friend"
).split()
VERBS = (
    "finds builds follows carries watches opens remembers explains crosses repairs paints "
    "describes visits answers greets measures protects writes reads counts holds moves reaches "
    "leaves joins"
).split()
INTRANSITIVE = "sleeps waits shines rests returns listens wanders grows falls speaks smiles".split()
ADVERBS = "slowly quickly quietly often rarely carefully gladly suddenly again together".split()
PREPOSITIONS = "near behind across under beside beyond inside through above along".split()
CONNECTIVES = ["and then", "but", "because", "while", "so", "until", "after"]


def _zipf_cdf(n: int, s: float = 1.1) -> list[float]:
    weights = [1.0 / (i**s) for i in range(1, n + 1)]
    total = sum(weights)
    return [c / total for c in itertools.accumulate(weights)]


# Zipf-distributed choice for the open word classes, uniform for the closed ones.
_CDFS = {id(words): _zipf_cdf(len(words)) for words in (ADJECTIVES, NOUNS, VERBS)}


def seeded_random(*parts) -> random.Random:
    """A ``random.Random`` seeded from ints/strings; stable across processes and versions."""
    return random.Random("-".join(str(p) for p in parts))


class TextGenerator:
    """Deterministic for a given seed (an int, a string or a tuple of them)."""

    def __init__(self, seed):
        self.rng = seeded_random(*(seed if isinstance(seed, (tuple, list)) else (seed,)))

    def _pick(self, words: list[str]) -> str:
        cdf = _CDFS.get(id(words))
        if cdf is None:
            return words[int(self.rng.random() * len(words))]
        return words[min(bisect.bisect_left(cdf, self.rng.random()), len(words) - 1)]

    def _noun_phrase(self) -> str:
        det = self._pick(DETERMINERS)
        words = [self._pick(ADJECTIVES)] if self.rng.random() < 0.6 else []
        words.append(self._pick(NOUNS))
        if det == "a" and words[0][0] in "aeiou":
            det = "an"
        return " ".join([det, *words])

    def _clause(self) -> str:
        subject = self._noun_phrase()
        if self.rng.random() < 0.3:
            clause = f"{subject} {self._pick(INTRANSITIVE)}"
        else:
            clause = f"{subject} {self._pick(VERBS)} {self._noun_phrase()}"
        if self.rng.random() < 0.35:
            clause += f" {self._pick(PREPOSITIONS)} {self._noun_phrase()}"
        if self.rng.random() < 0.25:
            clause += f" {self._pick(ADVERBS)}"
        return clause

    def sentence(self) -> str:
        text = self._clause()
        if self.rng.random() < 0.3:
            text += f" {self._pick(CONNECTIVES)} {self._clause()}"
        return text[0].upper() + text[1:] + "."

    def sentences(self, n: int) -> list[str]:
        return [self.sentence() for _ in range(n)]

    def document(self, num_words: int) -> str:
        """Paragraphs of sentences, about ``num_words`` words in all."""
        paragraphs, current, words = [], [], 0
        while words < num_words:
            s = self.sentence()
            current.append(s)
            words += s.count(" ") + 1
            if len(current) >= 3 and self.rng.random() < 0.25:
                paragraphs.append(" ".join(current))
                current = []
        if current:
            paragraphs.append(" ".join(current))
        return "\n\n".join(paragraphs)


def generated_documents(seed: int, start: int, stop: int, min_words: int, max_words: int):
    """Documents ``start..stop-1`` of a generated corpus; each depends only on (seed, index),
    so shards made by different processes agree. Lengths are log-uniform in words."""
    lo, hi = math.log(min_words), math.log(max_words + 1)
    for index in range(start, stop):
        gen = TextGenerator((seed, "doc", index))
        num_words = int(math.exp(gen.rng.uniform(lo, hi)))
        yield index, gen.document(max(min_words, min(num_words, max_words)))
