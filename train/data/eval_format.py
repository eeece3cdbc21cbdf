"""Training samples in the evaluation suite's own format (`train.data.ruler`, RULER's templates),
from seeds that the evaluation never uses.

A small model does not carry a retrieval skill over from one template to another: the
pipeline's own tasks (`train.data.synthetic`) phrase needles, questions and answer prefixes
differently from RULER's, so a model trained on them alone can score nothing on
`python -m eval`. The tasks named ``eval_<task>`` (``eval_niah_single``, ...,
``eval_variable_tracking``) are `train.data.ruler.generate`'s prompts with their answer appended:
the same templates, needles, haystack generator and answer prefixes.

Held out: the evaluation seeds its samples with an int (``eval.seed``, 0 by default); these
use the string ``train<seed>`` in the same place, so every random draw (keys, values,
haystack, depth) comes from a different stream; the needle depth is drawn uniformly in
[0, 1] instead of the evaluation's grid.
"""

from __future__ import annotations

from train.data.ruler import TaskError, generate, max_new_tokens, uses_depth
from train.data.samples import SyntheticSample
from train.data.task_names import EVAL_FORMAT_PREFIX as PREFIX
from train.data.task_names import EVAL_FORMAT_TASKS as TASKS
from train.data.textgen import seeded_random

__all__ = ["PREFIX", "TASKS", "answer_text", "generate_sample", "is_eval_format", "min_length",
           "training_seed"]


def is_eval_format(task: str) -> bool:
    return task in TASKS


def training_seed(seed: int) -> str:
    """The seed given to `train.data.ruler.generate`: never an int, so never one the evaluation uses."""
    return f"train{seed}"


def answer_text(task: str, answers: list[str]) -> str:
    """What follows the prompt's answer prefix: the values (NIAH: "... is" -> " 1234567.")
    or the variable names (after "they are: ", one more space, as RULER's one-shot example)."""
    if task == "variable_tracking":
        return " " + " ".join(answers)
    return " " + ", ".join(answers) + "."


class _NoFiller:
    """A haystack with no units: the prompt with nothing but its template, needles, example."""

    def units(self, seed_parts):
        return iter(())


def min_length(name: str, encoder, seed: int = 0, samples: int = 8) -> int:
    """Tokens a sample of `name` needs before any filler: prompt + the evaluation's tokens
    to generate (the largest over a few seeded draws)."""
    task = name[len(PREFIX):]
    need = 0
    for i in range(samples):
        s = generate(task, 1 << 30, encoder, seed=training_seed(seed), index=i,
                     depth=0.5 if uses_depth(task) else None, haystack=_NoFiller())
        need = max(need, s.prompt_tokens + max_new_tokens(task))
    return need


def generate_sample(name: str, length: int, encoder, seed: int = 0, index: int = 0):
    """One training document of `name` with at most `length` tokens: the evaluation's prompt
    at `length` (which leaves the evaluation's tokens to generate free) + the answer."""
    task = name[len(PREFIX):]
    depth = seeded_random(seed, name, "depth", length, index).random() if uses_depth(task) else None
    try:
        s = generate(task, length, encoder, seed=training_seed(seed), index=index, depth=depth)
    except TaskError as e:
        raise ValueError(f"synthetic task {name!r}: {e}") from None
    answer = answer_text(task, s.answers)
    tokens = int(encoder.count([s.prompt + answer])[0])
    return SyntheticSample(name, s.prompt, answer, list(s.answers), tokens, seed, index,
                           extra={"depth": depth})
