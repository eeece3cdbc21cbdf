"""RULER's synthetic tasks, generated locally (the evaluation's prompts, `python -m eval`;
the data pipeline trains on the same prompts as the ``eval_<task>`` tasks,
train/data/eval_format.py): templates, answer prefixes, generation
lengths and scoring follow NVIDIA/RULER (scripts/data/synthetic/constants.py and the task
scripts); words, keys and filler come from seeded generators instead of downloaded lists.

A sample is fully determined by ``(task, length, depth, seed, index)``, the haystack and the
tokenizer. As in RULER, ``length`` counts the prompt *and* the tokens to generate: the
prompt has at most ``length - max_new_tokens`` tokens of the model's tokenizer (and is
within one haystack unit of it).

Tasks (RULER's names in brackets):
- ``niah_single`` (niah_single_2): one needle "One of the special magic numbers for <key>
  is: <value>." at depth ``depth`` of the haystack; where one value is asked, the question
  is in the singular ("A special magic number is hidden ...") as RULER rewrites it;
- ``niah_multikey`` (niah_multikey_1): the queried needle at ``depth``, three distractor
  keys at seeded depths;
- ``niah_multivalue``: four values for the queried key, the first at ``depth``;
- ``niah_multiquery``: four keys asked at once, the first at ``depth``;
- ``variable_tracking`` (vt): one chain of five assignments ``VAR X = 12345`` in the haystack,
  after RULER's one-shot example: a whole task of about 500 tokens (RULER's noise filler,
  three-letter names, another value) with its answer;
- ``common_words`` (cwe): a numbered word list, 10 words 30 times (6 below 4K tokens), the
  others 3 times (once below 4K); name the 10 common ones. Before it, as in RULER, one worked
  example: a list of 40 words (10 of them 10 times, the rest 3 times; below 4K: 20 words, 3
  times and once) with its answer; its words are none of the real list's;
- ``frequent_words`` (fwe): coded words drawn from a Zipf (alpha 2) distribution; name the
  three most frequent (the most frequent "word" is the noise "..."). No example (RULER's
  script has an ``--add_fewshot`` flag that it never reads).

Examples are part of the prompt and so of its token budget; the prompt always ends with the
real question's answer prefix.
"""

from __future__ import annotations

import itertools
import math
import random
import string
from dataclasses import asdict, dataclass, field

from train.data.draws import distinct, number, pseudo_word, word_key
from train.data.textgen import TextGenerator, seeded_random
from train.data.tokenizer import TextEncoder

NIAH = {  # task -> (keys in the haystack, values per key, keys asked)
    "niah_single": (1, 1, 1),
    "niah_multikey": (4, 1, 1),
    "niah_multivalue": (1, 4, 1),
    "niah_multiquery": (4, 1, 4),
}
TASKS = (*NIAH, "variable_tracking", "common_words", "frequent_words")
# RULER's tokens_to_generate per task family.
MAX_NEW_TOKENS = {"niah": 128, "variable_tracking": 30, "common_words": 120, "frequent_words": 50}

NIAH_TEMPLATE = (
    "Some special magic numbers are hidden within the following text. Make sure to memorize "
    "it. I will quiz you about the numbers afterwards.\n{context}\nWhat are all the special "
    "magic numbers for {query} mentioned in the provided text?"
)
NIAH_ANSWER_PREFIX = " The special magic numbers for {query} mentioned in the provided text are"
NIAH_NEEDLE = "One of the special magic numbers for {key} is: {value}."


def niah_question(template: str, singular: bool) -> str:
    """RULER's rewrite of the template (and answer prefix) when a single value is asked."""
    if not singular:
        return template
    for a, b in (("Some", "A"), ("are all", "is"), ("are", "is"), ("numbers", "number")):
        template = template.replace(a, b)
    return template

VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
    "{context}\nQuestion: Find all variables that are assigned the value {query} in the text above."
)
VT_ANSWER_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, {num_v} "
    "variables are assigned the value {query}, they are: "
)
CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most "
    "common words in the above list?"
)
CWE_ANSWER_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three "
    "most frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. "
    "Please ignore the dots '....'. What are the three most frequently appeared words in the "
    "above coded text?"
)
FWE_ANSWER_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"


# RULER's noise filler: one line, repeated (`eval.haystack=noise`; variable tracking's example).
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."


class TaskError(ValueError):
    """A task that cannot be made as asked (unknown, or too long for the length): one line."""


class GeneratedHaystack:
    """The default filler: seeded pseudo-English, a fresh text per sample. A haystack is
    anything with ``units(seed_parts)`` -> an iterator of ``" " + sentence``."""

    def units(self, seed_parts: tuple):
        gen = TextGenerator(("haystack", *seed_parts))
        return (" " + gen.sentence() for _ in itertools.count())


@dataclass
class Sample:
    task: str
    length: int  # requested: prompt + generated tokens
    depth: float | None  # NIAH: where the (first) answer needle sits, 0 = start, 1 = end
    index: int
    prompt: str
    answers: list[str]
    max_new_tokens: int
    prompt_tokens: int
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def max_new_tokens(task: str) -> int:
    return MAX_NEW_TOKENS["niah" if task in NIAH else task]


def uses_depth(task: str) -> bool:
    return task in NIAH


def _split_template(template: str, **fmt) -> tuple[str, str]:
    head, tail = template.split("{context}")
    return head.format(**fmt), tail.format(**fmt)


def _fill(enc: TextEncoder, units, budget: int, compose, what: str) -> tuple[str, int]:
    """The longest prefix of `units` whose ``compose(prefix)`` fits in `budget` tokens."""
    fixed = int(enc.count([compose([])])[0])
    if fixed > budget:
        raise TaskError(f"{what}: needs at least {fixed} prompt tokens, has {budget}")
    kept, counts, total = [], [], fixed
    while total < budget:
        batch = list(_take(units, max(8, min(4096, (budget - total) // 8))))
        if not batch:
            break  # a finite haystack ran out: the prompt is as long as the source allows
        for unit, n in zip(batch, enc.count(batch).tolist()):
            kept.append(unit)
            counts.append(n)
            total += n
            if total >= budget:
                break
    n = len(kept)
    while True:  # tokenizers are not additive over units: trim until the whole prompt fits
        prompt = compose(kept[:n])
        tokens = int(enc.count([prompt])[0])
        if tokens <= budget or n == 0:
            break
        excess = tokens - budget
        while excess > 0 and n > 0:
            n -= 1
            excess -= counts[n]
    if tokens > budget:
        raise TaskError(f"{what}: cannot fit in {budget} prompt tokens")
    return prompt, tokens


def _take(it, n):
    for _ in range(n):
        try:
            yield next(it)
        except StopIteration:
            return


def _insert(units: list[str], needles: list[tuple[float, str]]) -> str:
    """Needles between haystack units: a needle at depth d goes before unit round(d * n)."""
    n = len(units)
    slots = sorted((min(n, round(d * n)), i) for i, (d, _) in enumerate(needles))
    parts, j = [], 0
    for u in range(n + 1):
        while j < len(slots) and slots[j][0] == u:
            parts.append(" " + needles[slots[j][1]][1])
            j += 1
        if u < n:
            parts.append(units[u])
    return "".join(parts).lstrip(" ")


def _niah(task, rng, depth, budget, enc, units, what):
    num_keys, num_values, num_queries = NIAH[task]
    keys = distinct(word_key, rng, num_keys)
    values = {k: distinct(number, rng, num_values) for k in keys}
    queried = keys[:num_queries]
    needles = [(k, v) for k in keys for v in values[k]]
    # The first answer needle sits at the requested depth; the others at seeded depths.
    depths = [depth] + [rng.random() for _ in needles[1:]]
    texts = [(d, NIAH_NEEDLE.format(key=k, value=v)) for d, (k, v) in zip(depths, needles)]
    query = queried[0] if len(queried) == 1 else ", ".join(queried[:-1]) + ", and " + queried[-1]
    singular = num_queries * num_values == 1
    head, tail = _split_template(niah_question(NIAH_TEMPLATE, singular), query=query)
    tail += niah_question(NIAH_ANSWER_PREFIX, singular).format(query=query)
    prompt, n = _fill(enc, units, budget, lambda us: head + _insert(us, texts) + tail, what)
    return prompt, n, [v for k in queried for v in values[k]]


# RULER builds variable tracking's one-shot example as a task of 500 tokens on its noise filler.
VT_EXAMPLE_TOKENS = 500


def _vt_names(rng, n: int, letters: int) -> list[str]:
    return distinct(lambda r: "".join(r.choice(string.ascii_uppercase) for _ in range(letters)),
                     rng, n)


def _vt_prompt(rng, names, value, budget, enc, units, what, before: str = ""):
    statements = [f"VAR {names[0]} = {value}."]
    statements += [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, len(names))]
    depths = sorted(rng.random() for _ in statements)  # in order: the chain must read forward
    texts = list(zip(depths, statements))
    head, tail = _split_template(VT_TEMPLATE, query=value)
    tail += VT_ANSWER_PREFIX.format(num_v=len(names), query=value)
    return _fill(enc, units, budget, lambda us: before + head + _insert(us, texts) + tail, what)


def _variable_tracking(rng, budget, enc, units, what, num_hops: int = 4):
    names = _vt_names(rng, num_hops + 1, 5)
    value = str(rng.randint(10_000, 99_999))
    # The one-shot example: three-letter names (never a real five-letter one), its own value.
    ex_names, ex_value = _vt_names(rng, num_hops + 1, 3), value
    while ex_value == value:
        ex_value = str(rng.randint(10_000, 99_999))
    ex_prompt, _ = _vt_prompt(rng, ex_names, ex_value, VT_EXAMPLE_TOKENS, enc,
                              itertools.repeat(" " + NOISE), what)
    example = ex_prompt + " " + " ".join(ex_names) + "\n"  # after "they are: ": two spaces, as RULER
    prompt, n = _vt_prompt(rng, names, value, budget, enc, units, what, before=example)
    return prompt, n, names


def _unique(make, rng, n: int, exclude=frozenset()) -> list[str]:
    """n distinct draws in draw order, none in `exclude` (a set: the word pools reach tens of
    thousands)."""
    seen: dict[str, None] = {}
    while len(seen) < n:
        w = make(rng)
        if w not in exclude:
            seen.setdefault(w)
    return list(seen)


def _largest_fitting(build, budget: int, enc: TextEncoder, lo: int, hi: int, what: str):
    """(prompt, tokens, n) of the largest n in [lo, hi] whose build(n) fits in `budget`."""
    def size(n):
        text = build(n)[0]
        return text, int(enc.count([text])[0])

    text, tokens = size(lo)
    if tokens > budget:
        raise TaskError(f"{what}: needs at least {tokens} prompt tokens, has {budget}")
    best = (lo, text, tokens)
    while lo < hi:  # invariant: build(lo) fits
        mid = (lo + hi + 1) // 2
        text, tokens = size(mid)
        if tokens <= budget:
            lo, best = mid, (mid, text, tokens)
        else:
            hi = mid - 1
    return best[1], best[2], best[0]


def _cwe_word(rng) -> str:
    return pseudo_word(rng, 3)


def _numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def _cwe_prompt(common, rare, repeats: int, rare_repeats: int, order_seed: float) -> str:
    words = common * repeats + rare * rare_repeats
    random.Random(order_seed).shuffle(words)
    head, tail = _split_template(CWE_TEMPLATE)
    return head + _numbered(words) + tail + CWE_ANSWER_PREFIX


def _common_words(rng, length, budget, enc, what, num_common: int = 10):
    # RULER's (list, example) shapes: (repeats, rare repeats), (words, repeats, rare repeats).
    (repeats, rare_repeats), (ex_words, ex_repeats, ex_rare_repeats) = (
        ((30, 3), (40, 10, 3)) if length >= 4096 else ((6, 1), (20, 3, 1)))
    pool = _unique(_cwe_word, rng, num_common + budget // 2 + 1)
    common, rare = pool[:num_common], pool[num_common:]
    order_seed = rng.random()
    # The worked example (drawn after the list, so the list is the same with or without it):
    # words the real list never uses, so an echo of the example's answer scores nothing.
    ex = _unique(_cwe_word, rng, ex_words, exclude=set(pool))
    ex_common = ex[:num_common]
    example = (_cwe_prompt(ex_common, ex[num_common:], ex_repeats, ex_rare_repeats, rng.random())
               + " " + _numbered(ex_common) + "\n")

    def build(n):
        return example + _cwe_prompt(common, rare[:n], repeats, rare_repeats, order_seed), common

    prompt, tokens, _ = _largest_fitting(build, budget, enc, 0, len(rare), what)
    return prompt, tokens, common


ZETA_2 = math.pi**2 / 6


def _frequent_words(rng, budget, enc, what, alpha: float = 2.0, word_len: int = 6):
    vocab_size = max(budget // 50, 8)
    vocab = _unique(lambda r: "".join(r.choice(string.ascii_lowercase) for _ in range(word_len)),
                    rng, vocab_size)
    vocab[0] = "..."  # the most frequent "word" is noise (RULER)
    order_seed = rng.random()

    def counts(n):
        return [int(n * k**-alpha / ZETA_2) for k in range(1, vocab_size + 1)]

    def build(n):
        words = [w for w, c in zip(vocab, counts(n)) for _ in range(c)]
        random.Random(order_seed).shuffle(words)
        head, tail = _split_template(FWE_TEMPLATE)
        return head + " ".join(words) + tail + FWE_ANSWER_PREFIX, vocab[1:4]

    # The answer must be unambiguous: the 3rd most frequent word beats the 4th.
    lo = next(n for n in range(1, 10**6) if counts(n)[3] > counts(n)[4])
    prompt, tokens, n = _largest_fitting(build, budget, enc, lo, max(lo, budget), what)
    return prompt, tokens, vocab[1:4]


def generate(task: str, length: int, tokenizer, seed: int = 0, index: int = 0,
             depth: float | None = None, haystack=None,
             new_tokens: int | None = None) -> Sample:
    """One sample. `depth` (NIAH tasks only) in [0, 1]; `haystack` (eval.haystack.Haystack or
    anything with its ``units``) defaults to generated text;
    `new_tokens` replaces RULER's tokens to generate (and so lengthens the prompt)."""
    if task not in TASKS:
        raise TaskError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    if uses_depth(task) and depth is None:
        raise TaskError(f"{task}: needs a needle depth")
    enc = tokenizer if isinstance(tokenizer, TextEncoder) else TextEncoder(tokenizer)
    haystack = haystack or GeneratedHaystack()
    new = max_new_tokens(task) if new_tokens is None else new_tokens
    budget = length - new
    what = f"{task} at length {length}"
    rng = seeded_random("eval", seed, task, length, depth, index)
    units = haystack.units((seed, task, length, depth, index))
    if task in NIAH:
        prompt, n, answers = _niah(task, rng, float(depth), budget, enc, units, what)
    elif task == "variable_tracking":
        prompt, n, answers = _variable_tracking(rng, budget, enc, units, what)
    elif task == "common_words":
        prompt, n, answers = _common_words(rng, length, budget, enc, what)
    else:
        prompt, n, answers = _frequent_words(rng, budget, enc, what)
    return Sample(task, length, depth if uses_depth(task) else None, index, prompt, list(answers),
                  new, n)
