"""Has a study base learned retrieval? Teacher-forced scores of its answers.

The study's evaluation generates answers; a base that cannot copy a value out of its
context scores 0 there, and so does every model extended from it, which leaves the study's
bar untestable (study/RESULTS.md, second study run). This probe answers the question
directly, in seconds, right after pretraining: for retrieval samples of the training mix's
tasks at a few lengths (seeds the training data never used), the model reads prompt +
answer in one forward (eval/teacher_forced.py: what `python -m eval` records per sample
with `eval.teacher_forced.enabled=true`), and we score the answer's tokens:

- `nll`: mean negative log-likelihood per answer token (a 7-digit value the model cannot
  see in its context costs about ln 10 = 2.30 nats per digit);
- `token_accuracy`: the share of answer tokens that are the argmax;
- `exact`: the share of samples whose every answer token is the argmax (greedy decoding
  would write the answer).

    python -m study.probe <model dir> [--tasks passkey,eval_niah_single] [--lengths 1024,2000]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

TASKS = ("passkey", "eval_niah_single", "eval_niah_multikey", "eval_variable_tracking")
LENGTHS = (1024, 2000)
# Samples come from this data seed: the study's mixes use data.seed 0 (study/conf/data/study.yaml).
PROBE_SEED = 7919
UNIFORM_DIGIT_NLL = math.log(10)


def check_task(task: str) -> None:
    """A one-line ValueError for a task the synthetic generator does not know (before any
    model is loaded)."""
    from train.data import eval_format
    from train.data.synthetic import TASKS as PIPELINE_TASKS

    if task not in PIPELINE_TASKS and not eval_format.is_eval_format(task):
        known = ", ".join([*PIPELINE_TASKS, *eval_format.TASKS])
        raise ValueError(f"unknown task {task!r} (known: {known})")


def answer_scores(model, tokenizer, task: str, length: int, samples: int = 8,
                  seed: int = PROBE_SEED) -> dict:
    """The mean scores over `samples` samples of `task` at `length` (each one
    eval.teacher_forced.score_answer: the computation `python -m eval` records per sample)."""
    from eval.teacher_forced import score_answer
    from train.data.synthetic import generate_sample

    loglik = right = tokens = exact = 0
    for index in range(samples):
        s = generate_sample(task, length, tokenizer, seed=seed, index=index)
        prompt = tokenizer(s.prompt, add_special_tokens=False)["input_ids"]
        answer = tokenizer(s.answer, add_special_tokens=False)["input_ids"]
        r = score_answer(model, prompt, answer)
        loglik += r["answer_loglik"]
        right += round(r["token_accuracy"] * r["answer_tokens"])
        tokens += r["answer_tokens"]
        exact += r["answer_exact"]
    return {"task": task, "length": length, "samples": samples, "nll": round(-loglik / tokens, 4),
            "token_accuracy": round(right / tokens, 4), "exact": round(exact / samples, 4)}


def load(model_dir: str | Path, device: str | None = None, dtype: torch.dtype | None = None):
    """(model, tokenizer) of a saved study model (dense or L2A) on `device` (default: the
    GPU if there is one), in `dtype` (default: bf16 on a GPU, fp32 on the CPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import l2a  # noqa: F401  (registers the L2A model classes)

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    return model, AutoTokenizer.from_pretrained(model_dir)


def probe(model_dir: str | Path, tasks=TASKS, lengths=LENGTHS, samples: int = 8,
          device: str | None = None) -> dict:
    model, tok = load(model_dir, device)
    model.eval()
    rows = [answer_scores(model, tok, t, n, samples) for t in tasks for n in lengths]
    return {"model": str(model_dir), "probe_seed": PROBE_SEED,
            "uniform_digit_nll": round(UNIFORM_DIGIT_NLL, 4), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--out", default=None, help="JSON file (default: print only)")
    a = p.parse_args(argv)
    if not (Path(a.model_dir) / "config.json").exists():
        print(f"study.probe: {a.model_dir}: no config.json (not a saved model)", file=sys.stderr)
        return 2
    try:
        for t in filter(None, a.tasks.split(",")):
            check_task(t)
        res = probe(a.model_dir, [t for t in a.tasks.split(",") if t],
                    [int(x) for x in a.lengths.split(",") if x], a.samples)
    except ValueError as e:  # a length too short for a task, an unknown task
        print(f"study.probe: {e}", file=sys.stderr)
        return 2
    for r in res["rows"]:
        print(f"{r['task']:>24} {r['length']:>6}: nll {r['nll']:.3f} (uniform digit "
              f"{res['uniform_digit_nll']:.2f}), token accuracy {r['token_accuracy']:.2f}, "
              f"exact {r['exact']:.2f}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
