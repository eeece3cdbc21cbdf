"""The synthetic-task suite: generate every (task, length, depth, sample) prompt, greedy
generation through `model.generate` with the KV cache (one prompt at a time: at long
context a batch would only add padding), RULER scoring."""

from __future__ import annotations

import time

import torch

from eval.config import EvalConfig
from eval.errors import EvalError
from eval.haystack import Haystack
from eval.routing import PrefillRoutes
from eval.scoring import score
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
    """(task, length, depth, index) of every sample, in run order."""
    for length in lengths:
        for task in cfg.tasks:
            for depth in (cfg.depths if uses_depth(task) else [None]):
                for index in range(cfg.samples):
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


def run_tasks(model, tokenizer, samples, routing: bool = True, log=print) -> list[dict]:
    """One record per sample: task, length, depth, index, prompt_tokens, answers,
    prediction, score, seconds and (L2A) the prefill's per-layer sparsity."""
    enc = TextEncoder(tokenizer)
    records = []
    with PrefillRoutes(model, enabled=routing) as routes:
        for i, s in enumerate(samples):
            values, _ = enc.encode([s.prompt])
            ids = torch.from_numpy(values.astype("int64"))[None]
            t0 = time.perf_counter()
            pred, n_new = greedy(model, tokenizer, ids, s.max_new_tokens)
            dt = time.perf_counter() - t0
            rec = {"task": s.task, "length": s.length, "depth": s.depth, "index": s.index,
                   "prompt_tokens": s.prompt_tokens, "answers": s.answers, "prediction": pred,
                   "generated_tokens": n_new,
                   "score": score(s.task, pred, s.answers), "seconds": dt}
            layer = routes.take()
            if layer is not None:
                rec["layer_sparsity"] = layer
            records.append(rec)
            log(f"[{i + 1}/{len(samples)}] {s.task} length {s.length}"
                + (f" depth {s.depth:g}" if s.depth is not None else "")
                + f": score {rec['score']:.2f} ({dt:.1f}s)")
    return records
