"""The study's design, shared by its steps (study/steps.py) and its answer (study/answer.py):
the retrieval tasks, how many samples and seeds the question needs, and the rows a run
trained on."""

from __future__ import annotations

RETRIEVAL_TASKS = ["niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery",
                   "variable_tracking"]
# Per model, task and evaluation length: generated samples (exact match; 5 tasks x 20 = 100
# per length: one sample moves a model's mean by 0.01) and teacher-forced ones (>= 100).
EVAL_SAMPLES, TEACHER_FORCED_SAMPLES = 20, 100
SEEDS, BASE_SEEDS = [0, 1, 2], [0, 1]  # extension seeds per arm and length; pretrained bases


def trained_seq_len(rec: dict) -> int:
    """Rows a run trained on (tiny runs: 512, whatever their length group says)."""
    return 512 if rec.get("scale") == "tiny" else rec["train_length"]
