"""The task generators: deterministic, the length they promise, the answer where they say,
and answers computed from the prompt text itself (not from the generator's bookkeeping)."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from eval.errors import EvalError
from eval.haystack import Haystack
from eval.scoring import score
from train.data.ruler import NIAH, TASKS, TaskError, generate

LENGTH = 2048  # bytes = tokens of the byte tokenizer


def _sample(task, tok, **kw):
    kw.setdefault("depth", 0.5 if task in NIAH else None)
    return generate(task, kw.pop("length", LENGTH), tok, **kw)


@pytest.mark.parametrize("task", TASKS)
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
    head = re.match(r"(Some|A) special magic numbers? (are|is) hidden .*? afterwards\.\n", prompt)
    return prompt[head.end():prompt.rindex("\nWhat ")]


# RULER's NIAH question, plural, and as RULER rewrites it when one value is asked.
NIAH_QUESTION = {
    False: ("Some special magic numbers are hidden within the following text. Make sure to "
            "memorize it. I will quiz you about the numbers afterwards.\n",
            "\nWhat are all the special magic numbers for {q} mentioned in the provided text? "
            "The special magic numbers for {q} mentioned in the provided text are"),
    True: ("A special magic number is hidden within the following text. Make sure to memorize "
           "it. I will quiz you about the number afterwards.\n",
           "\nWhat is the special magic number for {q} mentioned in the provided text? The "
           "special magic number for {q} mentioned in the provided text is"),
}


@pytest.mark.parametrize("task", list(NIAH))
def test_niah_question_singular_when_one_value_is_asked(task, tok):
    s = _sample(task, tok)
    asked = re.search(r" for (.+?) mentioned in the provided text\?", s.prompt).group(1)
    head, tail = NIAH_QUESTION[len(s.answers) == 1]
    assert s.prompt.startswith(head) and s.prompt.endswith(tail.format(q=asked))


@pytest.mark.parametrize("task", list(NIAH))
@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0])
def test_niah_needle_at_depth(task, depth, tok):
    s = _sample(task, tok, depth=depth)
    asked = re.search(r"magic numbers? for (.+?) mentioned in the provided text\?", s.prompt).group(1)
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


VT_HEAD = "Memorize and track the chain(s) of variable assignment hidden in the following text."


def _chain(text: str, value: str) -> list[str]:
    held, names = {value}, []
    for name, src in re.findall(r"VAR (\w+) = (?:VAR )?(\w+)\.", text):
        if src in held:  # the chain must read forward: each source assigned before use
            held.add(name)
            names.append(name)
    return names


def test_variable_tracking_chain_after_one_worked_example(tok):
    s = _sample("variable_tracking", tok)
    example, task = s.prompt.split(VT_HEAD)[1:]  # RULER's one-shot example, then the task
    value = re.search(r"assigned the value (\d+) in the text above", task).group(1)
    names = _chain(task, value)
    assert names == s.answers and len(names) == 5
    assert s.prompt.endswith(f"5 variables are assigned the value {value}, they are: ")
    # The example is a whole task with its answer, on other names and another value.
    ex_value = re.search(r"assigned the value (\d+) in the text above", example).group(1)
    ex_names = _chain(example, ex_value)
    assert len(ex_names) == 5 and ex_value != value
    assert example.endswith(f"they are:  {' '.join(ex_names)}\n")  # RULER's two spaces
    assert score("variable_tracking", " ".join(ex_names), s.answers) == 0.0
    assert score("variable_tracking", " ".join(names), s.answers) == 1.0


CWE_HEAD = "Below is a numbered list of words."
CWE_ASKED = "\nQuestion: What are the 10 most common words in the above list? Answer: The top 10 words that appear most often in the list are:"


def _counts(block: str) -> list[tuple[str, int]]:
    listed = block.split(CWE_ASKED)[0]
    numbers, words = zip(*re.findall(r"(\d+)\. (\w+)", listed))
    assert [int(n) for n in numbers] == list(range(1, len(numbers) + 1))
    return Counter(words).most_common()


# RULER's shapes: (example words, example repeats, example rare repeats, list repeats, rare).
@pytest.mark.parametrize("length,shape", [(2048, (20, 3, 1, 6, 1)), (8192, (40, 10, 3, 30, 3))])
def test_common_words_after_one_worked_example(length, shape, tok):
    ex_words, ex_rep, ex_rare, rep, rare = shape
    s = _sample("common_words", tok, length=length)
    assert s.prompt.startswith(CWE_HEAD) and s.prompt.endswith(CWE_ASKED)
    example, task = s.prompt[len(CWE_HEAD):].split(CWE_HEAD)  # one example, then the list
    # The example: a whole shorter task and its answer, the ten common words numbered.
    ex_counts = _counts(example)
    assert len(ex_counts) == ex_words
    assert {c for _, c in ex_counts} == {ex_rep, ex_rare}
    ex_answer = example.split(CWE_ASKED)[1]
    ex_top = sorted(w for w, c in ex_counts if c == ex_rep)
    assert re.fullmatch(r" " + " ".join(rf"{i + 1}\. (\w+)" for i in range(10)) + r"\n", ex_answer)
    assert sorted(re.findall(r"\d+\. (\w+)", ex_answer)) == ex_top
    # The real list: its ten most frequent words are the answers, unambiguously.
    counts = _counts(task)
    assert sorted(w for w, _ in counts[:10]) == sorted(s.answers)
    assert counts[9][1] == rep and counts[10][1] == rare
    # Disjoint: echoing the example's answer scores nothing, the real answer scores 1.
    assert not {w for w, _ in ex_counts} & {w for w, _ in counts}
    assert score("common_words", ex_answer, s.answers) == 0.0
    real = " ".join(f"{i + 1}. {w}" for i, w in enumerate(s.answers))
    assert score("common_words", real, s.answers) == 1.0


def test_frequent_words_are_the_most_frequent(tok):
    s = _sample("frequent_words", tok)
    ctx = s.prompt.split("coded words. ", 1)[1].split("\nQuestion:")[0]
    counts = Counter(w for w in ctx.split() if w != "...").most_common()
    assert [w for w, _ in counts[:3]] == s.answers
    assert counts[2][1] > counts[3][1]


def test_too_short_and_unknown(tok):
    with pytest.raises(TaskError, match="unknown task"):
        generate("niah_foo", LENGTH, tok, depth=0.5)
    with pytest.raises(TaskError, match="niah_single at length 200: needs at least"):
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
