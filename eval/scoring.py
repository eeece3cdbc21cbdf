"""RULER's scoring (scripts/eval/synthetic/constants.py and evaluate.py), per sample in [0, 1]:
``string_match_all``: the fraction of expected answers found in the prediction (case
insensitive substring), what every synthetic task of RULER uses; ``string_match_part``:
1 if any is found (RULER's QA tasks)."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess(prediction: str) -> str:
    """RULER's postprocess_pred: control characters become newlines, then strip."""
    return _CONTROL.sub("\n", prediction.strip()).strip()


def string_match_all(prediction: str, answers: list[str]) -> float:
    pred = postprocess(prediction).lower()
    return sum(1.0 for a in answers if a.lower() in pred) / len(answers)


def string_match_part(prediction: str, answers: list[str]) -> float:
    pred = postprocess(prediction).lower()
    return max(1.0 if a.lower() in pred else 0.0 for a in answers)


def score(task: str, prediction: str, answers: list[str]) -> float:
    return string_match_all(prediction, answers)
