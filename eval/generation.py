"""The synthetic-task suite: generate every (task, length, depth, sample) prompt, greedy
generation through `model.generate` with the KV cache (one prompt at a time: at long
context a batch would only add padding), RULER scoring; with `eval.teacher_forced`, the
gold answer's teacher-forced scores too (eval/teacher_forced.py), on the generated samples
and on further samples of the same cells that are not generated."""

from __future__ import annotations

import time

import torch

from eval.config import EvalConfig
from eval.errors import EvalError
from eval.haystack import Haystack
from eval.routing import PrefillRoutes
from eval.scoring import score
from eval.teacher_forced import gold_answer, score_answer
from train.data.ruler import TaskError, generate, uses_depth
from train.data.tokenizer import TextEncoder


@torch.no_grad()
def greedy(model, tokenizer, input_ids: torch.Tensor, max_new_tokens: int) -> tuple[str, int]:
    """Greedy continuation of one prompt (1, T): (text without special tokens, tokens)."""
    device = next(model.parameters()).device
    ids = input_ids.to(device)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, temperature=None, top_p=None, top_k=None, num_beams=1,
                         eos_token_id=eos, pad_token_id=pad, use_cache=True)
    new = out[0, ids.shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True), int(new.numel())


def cells(cfg: EvalConfig, lengths: list[int]):
    """(task, length, depth, index) of every sample, in run order: per cell the generated
    samples (index < eval.samples), then those scored teacher-forced only."""
    per_cell = max(cfg.samples, cfg.teacher_forced_samples())
    for length in lengths:
        for task in cfg.tasks:
            for depth in (cfg.depths if uses_depth(task) else [None]):
                for index in range(per_cell):
                    yield task, length, depth, index


def make_samples(cfg: EvalConfig, lengths: list[int], tokenizer, haystack: Haystack,
                 prefix: str = "eval"):
    """Every prompt of the suite, generated before any model call (so a too-short length or
    haystack fails before minutes of generation)."""
    enc = TextEncoder(tokenizer)
    out = []
    for task, length, depth, index in cells(cfg, lengths):
        try:
            out.append(generate(task, length, enc, seed=cfg.seed, index=index, depth=depth,
                                haystack=haystack, new_tokens=cfg.max_new_tokens))
        except TaskError as e:  # the keys that change it: a short base's first question
            raise EvalError(f"{prefix}.lengths: {e} (use longer {prefix}.lengths, or leave "
                            f"{task} out of {prefix}.tasks)") from None
    return out


def run_tasks(model, tokenizer, samples, routing: bool = True, log=print,
              generated: int | None = None, teacher_forced: bool = False) -> list[dict]:
    """One record per sample: task, length, depth, index, prompt_tokens, answers,
    generated (bool), prediction, generated_tokens, score (exact match as RULER scores
    it; None where not generated), seconds and (L2A) the generation's prefill sparsity per
    layer; with `teacher_forced`, answer_loglik, answer_tokens, token_accuracy and
    answer_exact. Samples with index < `generated` (None: all) are generated."""
    enc = TextEncoder(tokenizer)
    records = []
    with PrefillRoutes(model, enabled=routing) as routes:
        for i, s in enumerate(samples):
            values, _ = enc.encode([s.prompt])
            ids = torch.from_numpy(values.astype("int64"))[None]
            gen = generated is None or s.index < generated
            t0 = time.perf_counter()
            rec = {"task": s.task, "length": s.length, "depth": s.depth, "index": s.index,
                   "prompt_tokens": s.prompt_tokens, "answers": s.answers, "generated": gen,
                   "prediction": None, "generated_tokens": 0, "score": None}
            if gen:
                pred, n_new = greedy(model, tokenizer, ids, s.max_new_tokens)
                rec.update(prediction=pred, generated_tokens=n_new,
                           score=score(s.task, pred, s.answers))
                layer = routes.take()
                if layer is not None:
                    rec["layer_sparsity"] = layer
            if teacher_forced:
                answer, _ = enc.encode([gold_answer(s.task, s.answers)])
                rec.update(score_answer(model, values.tolist(), answer.tolist()))
                routes.take()  # the teacher-forced forward is no prefill of a generation
            rec["seconds"] = time.perf_counter() - t0
            records.append(rec)
            log(f"[{i + 1}/{len(samples)}] {s.task} length {s.length}"
                + (f" depth {s.depth:g}" if s.depth is not None else "") + ": "
                + ", ".join(filter(None, [
                    f"score {rec['score']:.2f}" if gen else "teacher-forced",
                    f"token accuracy {rec['token_accuracy']:.2f}, answer loglik "
                    f"{rec['answer_loglik']:.2f}" if teacher_forced else ""]))
                + f" ({rec['seconds']:.1f}s)")
    return records
