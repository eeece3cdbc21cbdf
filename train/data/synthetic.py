"""Seeded synthetic long-context tasks (RULER-style), at any length in tokens.

A sample is fully determined by ``(task, length, seed, index)`` and the tokenizer, so the
training data of the tiny default and a later evaluation can make the very same samples.
``text = prompt + answer``; ``prompt`` ends right before the answer to be generated;
``length`` is the number of tokens of ``text`` (no special tokens), filled to within one
haystack unit (a sentence, a key-value pair or a word) below the requested length.

Tasks:
- ``passkey``: one number hidden in filler text.
- ``niah_single`` / ``niah_multikey`` / ``niah_multivalue`` / ``niah_multiquery``:
  needles "One of the special magic numbers for <key> is: <value>." among filler text,
  with distractor keys, several values for one key, or several keys asked at once.
- ``kv_retrieval``: a JSON object of random UUID pairs; return the value of one key.
- ``variable_tracking``: chains ``VAR A = 12345. VAR B = A.`` among filler; name every
  variable that ends up holding the queried value.
- ``common_words``: a long list of words; name the most frequent ones.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from dataclasses import dataclass

from train.data import eval_format
from train.data.draws import distinct, number, pseudo_word, uuid, word_key
from train.data.samples import SyntheticSample
from train.data.textgen import TextGenerator, seeded_random
from train.data.tokenizer import TextEncoder


@dataclass
class _Layout:
    """What a task contributes; the generic filler fits it to the requested length."""

    header: str
    needles: list[str]
    question: str
    answer: str
    answers: list[str]
    filler: callable  # (rng) -> one haystack unit, joiner included
    ordered_needles: bool = False  # variable chains must appear in order
    footer: str = ""  # closes the haystack (the JSON brace), before the question


def _sentence_filler(seed_parts):
    gen = TextGenerator(seed_parts)
    return lambda rng: " " + gen.sentence()


_NIAH_HEADER = "Remember the special magic numbers hidden in the following text.\n"


def _niah(rng, seed_parts, num_keys: int, num_values: int, num_queries: int) -> _Layout:
    keys = distinct(word_key, rng, num_keys)
    pairs = [(k, v) for k in keys for v in distinct(number, rng, num_values)]
    rng.shuffle(pairs)  # then kept in this order, so answers follow the text's order
    queried = keys[:num_queries]
    answers = [v for q in queried for k, v in pairs if k == q]
    needles = [f" The special magic number for {k} is {v}." for k, v in pairs]
    if len(answers) > 1:
        names = " and ".join(queried)
        question = f"\nWhat are all the special magic numbers for {names}? They are"
    else:
        question = f"\nWhat is the special magic number for {queried[0]}? It is"
    return _Layout(
        _NIAH_HEADER,
        needles,
        question,
        " " + ", ".join(answers),
        answers,
        _sentence_filler(seed_parts),
        ordered_needles=True,
    )


def _passkey(rng, seed_parts) -> _Layout:
    key = str(rng.randint(10_000, 99_999))
    return _Layout(
        "Find the pass key hidden in the following text and remember it.\n",
        [f" The pass key is {key}. Remember it. {key} is the pass key."],
        "\nWhat is the pass key? The pass key is",
        " " + key,
        [key],
        _sentence_filler(seed_parts),
    )


def _kv_retrieval(rng, seed_parts) -> _Layout:
    key, value = uuid(rng), uuid(rng)
    return _Layout(
        "Find the value of the given key in this JSON object.\n{",
        [f' "{key}": "{value}",'],
        f'\nThe value of key "{key}" is',
        f' "{value}"',
        [value],
        lambda r: f' "{uuid(r)}": "{uuid(r)}",',
        footer=' "end": "end"}',
    )


def _var_name(rng) -> str:
    return "".join(rng.choice(string.ascii_uppercase) for _ in range(5))


def _variable_tracking(rng, seed_parts, num_chains: int = 2, num_hops: int = 3) -> _Layout:
    names = distinct(_var_name, rng, num_chains * (num_hops + 1))
    values = distinct(number, rng, num_chains)
    chains = [names[c * (num_hops + 1) : (c + 1) * (num_hops + 1)] for c in range(num_chains)]
    statements = []
    for chain, value in zip(chains, values):
        lines = [f" VAR {chain[0]} = {value}."]
        lines += [f" VAR {chain[i]} = {chain[i - 1]}." for i in range(1, len(chain))]
        statements.append(lines)
    # Interleave the chains so that each stays in order but they cross each other.
    needles = [s for group in zip(*statements) for s in group]
    asked = chains[0]
    return _Layout(
        "Track the chains of variable assignments hidden in the following text.\n",
        needles,
        f"\nWhich variables hold the value {values[0]}? They are",
        " " + " ".join(asked),
        list(asked),
        _sentence_filler(seed_parts),
        ordered_needles=True,
    )


def _common_words(rng, seed_parts, num_common: int = 5, repeats: int = 4) -> _Layout:
    common = distinct(lambda r: pseudo_word(r, 2), rng, num_common)
    needles = [f" {w}," for w in common for _ in range(repeats)]
    rng.shuffle(needles)
    answers = list(dict.fromkeys(n.strip(" ,") for n in needles))  # order of first appearance
    seen: dict[str, int] = {w: repeats for w in common}

    def rare(r):
        # Three-syllable words never collide with the two-syllable common ones; a rare word
        # is never used as often as a common word, so the answer is unambiguous.
        while True:
            w = pseudo_word(r, 3)
            if seen.get(w, 0) < repeats - 2:
                seen[w] = seen.get(w, 0) + 1
                return f" {w},"

    return _Layout(
        "Find the words that appear most often in this list:",
        needles,
        f"\nThe {num_common} most common words in the list are",
        " " + ", ".join(answers),
        answers,
        rare,
    )


TASKS = {
    "passkey": _passkey,
    "niah_single": lambda rng, sp: _niah(rng, sp, 1, 1, 1),
    "niah_multikey": lambda rng, sp: _niah(rng, sp, 4, 1, 1),
    "niah_multivalue": lambda rng, sp: _niah(rng, sp, 1, 4, 1),
    "niah_multiquery": lambda rng, sp: _niah(rng, sp, 4, 1, 2),
    "kv_retrieval": _kv_retrieval,
    "variable_tracking": _variable_tracking,
    "common_words": _common_words,
}


def _as_encoder(tokenizer_or_encoder) -> TextEncoder:
    if isinstance(tokenizer_or_encoder, TextEncoder):
        return tokenizer_or_encoder
    return TextEncoder(tokenizer_or_encoder)


def _fixed_tokens(layout: _Layout, enc: TextEncoder) -> int:
    fixed = [layout.header, *layout.needles, layout.footer, layout.question, layout.answer]
    return int(enc.count(fixed).sum())


def min_length(task: str, tokenizer, seed: int = 0, samples: int = 8) -> int:
    """Tokens that ``task`` needs besides filler (the largest over a few seeded draws)."""
    enc = _as_encoder(tokenizer)
    if eval_format.is_eval_format(task):
        return eval_format.min_length(task, enc, seed, samples)
    return max(
        _fixed_tokens(TASKS[task](seeded_random(seed, task, "min", i), (seed, i)), enc)
        for i in range(samples)
    )


def generate_sample(
    task: str, length: int, tokenizer, seed: int = 0, index: int = 0
) -> SyntheticSample:
    """One sample of ``task`` whose ``text`` has at most ``length`` tokens (and within one
    haystack unit of it). Raises ``ValueError`` if ``length`` is too short for the task.
    ``eval_<task>``: the evaluation suite's own format (train/data/eval_format.py)."""
    if eval_format.is_eval_format(task):
        return eval_format.generate_sample(task, length, _as_encoder(tokenizer), seed, index)
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r} (known: {', '.join(TASKS)})")
    enc = _as_encoder(tokenizer)
    rng = seeded_random(seed, task, length, index)
    layout = TASKS[task](rng, (seed, task, length, index, "filler"))
    fixed_tokens = _fixed_tokens(layout, enc)
    if fixed_tokens > length:
        raise ValueError(
            f"synthetic task {task!r} needs at least {fixed_tokens} tokens, asked for {length}"
        )
    units, counts, total = [], [], fixed_tokens
    while total < length:
        batch = [layout.filler(rng) for _ in range(max(8, min(4096, (length - total) // 8)))]
        for unit, n in zip(batch, enc.count(batch).tolist()):
            units.append(unit)
            counts.append(n)
            total += n
            if total >= length:
                break
    # Needles go between filler units at seeded depths (sorted when order matters).
    slots = [rng.randint(0, len(units)) for _ in layout.needles]
    if layout.ordered_needles:
        slots.sort()

    def compose(n_units: int) -> str:
        parts: list[str] = []
        placed = sorted(
            ((min(s, n_units), i) for i, s in enumerate(slots)), key=lambda x: (x[0], x[1])
        )
        j = 0
        for u in range(n_units + 1):
            while j < len(placed) and placed[j][0] == u:
                parts.append(layout.needles[placed[j][1]])
                j += 1
            if u < n_units:
                parts.append(units[u])
        return layout.header + "".join(parts) + layout.footer + layout.question

    # Drop filler from the end until the whole text fits (tokenizers are not exactly additive).
    n_units = len(units)
    while True:
        prompt = compose(n_units)
        n_tokens = int(enc.count([prompt + layout.answer])[0])
        if n_tokens <= length or n_units == 0:
            break
        excess, drop = n_tokens - length, 0
        while excess > 0 and n_units > 0:
            n_units -= 1
            excess -= counts[n_units]
            drop += 1
    if n_tokens > length:
        raise ValueError(f"synthetic task {task!r} cannot fit in {length} tokens")
    return SyntheticSample(task, prompt, layout.answer, layout.answers, n_tokens, seed, index)


def synthetic_documents(
    tasks: list[str], min_tokens: int, max_tokens: int, tokenizer, seed: int, start: int, stop: int
) -> Iterator[SyntheticSample]:
    """Samples ``start..stop-1`` of the training mixture's synthetic source: the task and
    the length (uniform in [min_tokens, max_tokens]) are drawn from (seed, index)."""
    enc = _as_encoder(tokenizer)
    # Short lengths are raised to what a task needs (plus some filler), within max_tokens.
    floor = {t: min(max_tokens, int(min_length(t, enc, seed) * 1.25) + 16) for t in tasks}
    for index in range(start, stop):
        rng = seeded_random(seed, "synthetic-pick", index)
        task = tasks[rng.randrange(len(tasks))]
        length = max(rng.randint(min_tokens, max_tokens), floor[task])
        yield generate_sample(task, length, enc, seed=seed, index=index)
