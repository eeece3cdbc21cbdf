"""Training documents in the evaluation suite's own format (train/data/eval_format.py): the
evaluation's templates and answer prefixes, a correct answer after them, and never one of the
evaluation's own samples."""

import pytest

from eval.scoring import score
from train.data.eval_format import TASKS
from train.data.ruler import generate
from train.data.synthetic import generate_sample, min_length, synthetic_documents

# The ends of the evaluation's prompts (train/data/ruler.py: RULER's answer prefixes).
PREFIX_END = {"niah": (" mentioned in the provided text is", " mentioned in the provided text are"),
              "variable_tracking": ("they are: ",)}


def _count(tok, text):
    return len(tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("length", [2048, 8192])
def test_the_evaluations_format_with_a_correct_answer(byte_tok, name, length):
    task = name.removeprefix("eval_")
    s = generate_sample(name, length, byte_tok, seed=0, index=3)
    assert s.text == s.prompt + s.answer
    assert _count(byte_tok, s.text) == s.length <= length
    assert s.length >= length - 200  # filled with haystack up to the evaluation's budget
    ends = PREFIX_END["niah" if task.startswith("niah") else task]
    assert s.prompt.endswith(ends)
    ev = generate(task, length, byte_tok, seed=0, index=0, depth=0.5 if "niah" in task else None)
    assert s.prompt.split("\n")[0] == ev.prompt.split("\n")[0]  # the same instruction line
    for a in s.answers:
        assert a in s.prompt  # the needle is in the context
    # RULER's scoring gives the appended answer full marks: it is what the model should say.
    assert score(task, s.answer, s.answers) == 1.0


def test_the_evaluations_samples_are_held_out(byte_tok):
    """The study evaluates seeds 0, 1, 2 (study.steps.SEEDS), indices 0, 1, ... at needle
    depth 0.5; none of the first three indices' answers (7-digit values, 5-letter variable
    names) appears in 40 training documents per task at the same length."""
    length = 2048
    for name in TASKS:
        task = name.removeprefix("eval_")
        depth = 0.5 if "niah" in task else None
        train_text = " ".join(generate_sample(name, length, byte_tok, seed=0, index=i).text
                              for i in range(40))
        for seed in (0, 1, 2):
            for index in range(3):
                ev = generate(task, length, byte_tok, seed=seed, index=index, depth=depth)
                assert not any(a in train_text for a in ev.answers), (name, seed, index, ev.answers)


def test_min_length_and_the_mixture(byte_tok):
    for name in TASKS:
        need = min_length(name, byte_tok)
        with pytest.raises(ValueError, match=name):
            generate_sample(name, need - 60, byte_tok)
        generate_sample(name, need + 8, byte_tok)  # fits
    docs = list(synthetic_documents([*TASKS, "passkey"], 400, 2048, byte_tok, 0, 0, 30))
    assert {d.task for d in docs} >= set(TASKS)
    assert all(d.length <= 2048 for d in docs)
