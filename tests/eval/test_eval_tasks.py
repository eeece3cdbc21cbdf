"""The task generators: deterministic, the length they promise, the answer where they say,
and answers computed from the prompt text itself (not from the generator's bookkeeping)."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from eval.errors import EvalError
from eval.haystack import Haystack
from eval.tasks import NIAH, NIAH_TEMPLATE, TASKS, generate

LENGTH = 2048  # bytes = tokens of the byte tokenizer


def _sample(task, tok, **kw):
    kw.setdefault("depth", 0.5 if task in NIAH else None)
    return generate(task, kw.pop("length", LENGTH), tok, **kw)


@pytest.mark.parametrize("task", [t for t in TASKS if t != "common_words"])
def test_deterministic_and_fits(task, tok):
    a, b = _sample(task, tok), _sample(task, tok)
    assert a.prompt == b.prompt and a.answers == b.answers
    assert _sample(task, tok, seed=1).prompt != a.prompt
    assert _sample(task, tok, index=1).prompt != a.prompt
    n = len(a.prompt.encode())
    assert n == a.prompt_tokens
    budget = LENGTH - a.max_new_tokens
    # Within one haystack unit (a sentence, a word: < 120 bytes) below the budget.
    assert budget - 120 <= n <= budget


def _context(prompt: str) -> str:
    head = NIAH_TEMPLATE.split("{context}")[0]
    tail = "\nWhat are all the special magic numbers for "
    assert prompt.startswith(head)
    return prompt[len(head):prompt.rindex(tail)]


@pytest.mark.parametrize("task", list(NIAH))
@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0])
def test_niah_needle_at_depth(task, depth, tok):
    s = _sample(task, tok, depth=depth)
    asked = re.search(r"magic numbers for (.+?) mentioned in the provided text\?", s.prompt).group(1)
    keys = re.split(r", and |, ", asked)
    ctx = _context(s.prompt)
    needles = re.findall(r"One of the special magic numbers for (\S+) is: (\d+)\.", ctx)
    expected = [v for key in keys for k, v in needles if k == key]
    assert sorted(expected) == sorted(s.answers) and len(s.answers) == {
        "niah_single": 1, "niah_multikey": 1, "niah_multivalue": 4, "niah_multiquery": 4}[task]
    # The first answer's needle sits at the requested depth of the haystack, counted in
    # sentences as RULER does (generated sentences hold exactly one period each).
    needle = re.compile(r" ?One of the special magic numbers for \S+ is: \d+\.")
    pos = ctx.index(f"is: {s.answers[0]}.")
    before, total = needle.sub("", ctx[:pos]).count("."), needle.sub("", ctx).count(".")
    assert total > 10 and abs(before / total - depth) <= 0.5 / total + 1e-9, (before, total, depth)


def test_variable_tracking_chain(tok):
    s = _sample("variable_tracking", tok)
    value = re.search(r"assigned the value (\d+) in the text above", s.prompt).group(1)
    held, names = {value}, []
    for name, src in re.findall(r"VAR (\w+) = (?:VAR )?(\w+)\.", s.prompt):
        if src in held:  # the chain must read forward: each source assigned before use
            held.add(name)
            names.append(name)
    assert names == s.answers and len(names) == 5


def test_common_words_are_the_most_frequent(tok):
    s = _sample("common_words", tok, length=4096)
    words = re.findall(r"\d+\. (\w+)", s.prompt.split("\nQuestion:")[0])
    counts = Counter(words).most_common()
    top = [w for w, _ in counts[:10]]
    assert sorted(top) == sorted(s.answers)
    assert counts[9][1] > counts[10][1]  # unambiguous


def test_frequent_words_are_the_most_frequent(tok):
    s = _sample("frequent_words", tok)
    ctx = s.prompt.split("coded words. ", 1)[1].split("\nQuestion:")[0]
    counts = Counter(w for w in ctx.split() if w != "...").most_common()
    assert [w for w, _ in counts[:3]] == s.answers
    assert counts[2][1] > counts[3][1]


def test_too_short_and_unknown(tok):
    with pytest.raises(EvalError, match="unknown task"):
        generate("niah_foo", LENGTH, tok, depth=0.5)
    with pytest.raises(EvalError, match="niah_single at length 200: needs at least"):
        generate("niah_single", 200, tok, depth=0.5)


def test_text_haystack(tok, tmp_path):
    text = " ".join(f"Sentence number {i} is here." for i in range(400))
    f = tmp_path / "hay.txt"
    f.write_text(text)
    h = Haystack(str(f))
    s = generate("niah_single", LENGTH, tok, depth=0.5, haystack=h)
    assert "Sentence number 0 is here." in s.prompt  # every sample reads the source from its start
    with pytest.raises(EvalError, match="has .* tokens, the longest length needs 99999"):
        h.check_length(__import__("train.data.tokenizer", fromlist=["x"]).TextEncoder(tok), 99999)
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(EvalError, match="holds no text"):
        Haystack(str(tmp_path / "empty.txt"))
    with pytest.raises(EvalError, match="must be generated, noise or an existing path"):
        Haystack(str(tmp_path / "missing.txt"))
