"""The evaluation of one model: everything is generated and checked first (lengths against
the model's context, haystack and perplexity sources), then perplexity and routing on
held-out rows, then the synthetic tasks. Returns the results as a dict; writing them is
the caller's (`python -m eval`, or the trainer's `train.eval_every` hook)."""

from __future__ import annotations

import math
import time

from eval.config import EvalConfig
from eval.errors import EvalError
from eval.generation import make_samples, run_tasks
from eval.haystack import Haystack
from eval.load import is_l2a, max_context
from eval.perplexity import load_rows, perplexity_at, total_loss
from eval.report import task_cells, task_routing
from eval.routing import dead_layers, routed_layers
from train.data.tokenizer import TextEncoder


def prepare(cfg: EvalConfig, model, tokenizer, prefix: str = "eval"):
    """Everything the run needs before the first model call; bad input fails here."""
    context = max_context(model)
    lengths = cfg.resolve_lengths(context, prefix)
    samples = []
    if cfg.tasks:
        haystack = Haystack(cfg.haystack, tokenizer)
        haystack.check_length(TextEncoder(tokenizer), max(lengths))
        samples = make_samples(cfg, lengths, tokenizer, haystack, prefix)
    ppl_rows = {}
    p = cfg.perplexity
    if p.data is not None:
        for i, n in enumerate(p.lengths or lengths):
            if n > context:
                raise EvalError(f"{prefix}.perplexity.lengths.{i}: {n} is above the model's "
                                f"context (max_position_embeddings {context})")
            ppl_rows[n] = load_rows(p.data, tokenizer, n, p.rows, cfg.seed)
    return lengths, samples, ppl_rows


def evaluate(model, tokenizer, cfg: EvalConfig, log=print, prefix: str = "eval") -> dict:
    t_start = time.perf_counter()
    lengths, samples, ppl_rows = prepare(cfg, model, tokenizer, prefix)
    l2a = is_l2a(model)
    results: dict = {"lengths": lengths, "l2a": l2a, "timings": {}}
    by_position, per_length, heldout = [], [], []
    t0 = time.perf_counter()
    for n, rows in ppl_rows.items():
        buckets, routing = perplexity_at(model, rows, n, cfg.perplexity.buckets)
        by_position += buckets
        loss = total_loss(buckets)
        per_length.append({"length": n, "rows": len(rows), "tokens": sum(b["tokens"] for b in buckets),
                           "loss": loss, "ppl": math.exp(loss) if loss is not None and loss < 700 else None})
        if routing is not None and cfg.routing:
            heldout.append(routing)
        log(f"perplexity at length {n}: loss {loss if loss is None else round(loss, 4)}")
    results["timings"]["perplexity_s"] = time.perf_counter() - t0
    results["perplexity"] = per_length
    results["perplexity_by_position"] = by_position

    t0 = time.perf_counter()
    records = run_tasks(model, tokenizer, samples, routing=cfg.routing, log=log,
                        generated=cfg.samples,
                        teacher_forced=cfg.teacher_forced_samples() > 0) if samples else []
    results["timings"]["tasks_s"] = time.perf_counter() - t0
    results["tasks"] = task_cells(records)
    results["samples"] = records
    if l2a and cfg.routing:
        # Entry j of every per-layer list is decoder layer routing["layers"][j].
        routing = {"layers": routed_layers(model.config), "heldout": heldout,
                   "tasks": task_routing(records)}
        source = heldout[-1]["layer_sparsity"] if heldout else (
            routing["tasks"][-1]["layer_sparsity"] if routing["tasks"] else None)
        routing["dead_layers"] = (dead_layers(source, routing["layers"]) if source is not None
                                  else None)
        results["routing"] = routing
    results["timings"]["total_s"] = time.perf_counter() - t_start
    return results
