"""results.json (written once, atomically) and the table printed at the end."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path

RESULTS_FILE = "results.json"


def task_cells(records: list[dict]) -> list[dict]:
    """Per (task, length, depth), and per (task, length) over all depths (depth "all"): the
    mean exact-match score over the generated samples with their count; where samples were
    scored teacher-forced, their count, mean token accuracy and mean answer log-likelihood
    per answer token (nats)."""
    groups: dict = defaultdict(list)
    for r in records:
        groups[(r["task"], r["length"], r["depth"])].append(r)
        if r["depth"] is not None:
            groups[(r["task"], r["length"], "all")].append(r)
    out = []
    for (task, length, depth), recs in groups.items():
        scores = [r["score"] for r in recs if r.get("score") is not None]
        cell = {"task": task, "length": length, "depth": depth, "samples": len(scores),
                "score": sum(scores) / len(scores) if scores else None}
        forced = [r for r in recs if "answer_loglik" in r]
        if forced:
            cell["teacher_forced"] = {
                "samples": len(forced),
                "token_accuracy": sum(r["token_accuracy"] for r in forced) / len(forced),
                "answer_loglik_per_token": (sum(r["answer_loglik"] for r in forced)
                                            / sum(r["answer_tokens"] for r in forced))}
        out.append(cell)
    return out


def task_routing(records: list[dict]) -> list[dict]:
    """Mean prefill sparsity per layer, per (task, length)."""
    groups: dict = defaultdict(list)
    for r in records:
        if "layer_sparsity" in r:
            groups[(r["task"], r["length"])].append(r["layer_sparsity"])
    out = []
    for (task, length), rows in groups.items():
        layers = [sum(col) / len(col) for col in zip(*rows)]
        out.append({"task": task, "length": length, "samples": len(rows),
                    "layer_sparsity": layers, "sparsity": sum(layers) / len(layers)})
    return out


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def write_results(run_dir: Path, results: dict) -> Path:
    path = Path(run_dir) / RESULTS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_clean(results), indent=1) + "\n")
    os.replace(tmp, path)
    return path


def summary_metrics(results: dict, prefix: str = "eval/") -> dict:
    """Flat scalars (for metrics.jsonl and wandb): score per task and length, mean score
    per length, loss per length, mean held-out sparsity per length."""
    out = {}
    per_len: dict = defaultdict(list)
    for c in results.get("tasks", []):
        if c["depth"] in (None, "all"):
            out[f"{prefix}{c['task']}/{c['length']}"] = c["score"]
            per_len[c["length"]].append(c["score"])
    for length, scores in per_len.items():
        out[f"{prefix}score/{length}"] = sum(scores) / len(scores)
    for p in results.get("perplexity", []):
        if p.get("loss") is not None:
            out[f"{prefix}loss/{p['length']}"] = p["loss"]
    for r in results.get("routing", {}).get("heldout", []):
        out[f"{prefix}sparsity/{r['length']}"] = sum(r["layer_sparsity"]) / max(len(r["layer_sparsity"]), 1)
    return out


def format_table(results: dict) -> str:
    lines = []
    cells = [c for c in results.get("tasks", []) if c["depth"] in (None, "all")]
    lengths = sorted({c["length"] for c in cells} | {p["length"] for p in results.get("perplexity", [])})
    if not lengths:
        return "nothing evaluated"
    head = f"{'':<22}" + "".join(f"{n:>10}" for n in lengths)
    lines.append(head)
    tasks = list(dict.fromkeys(c["task"] for c in cells))
    score = {(c["task"], c["length"]): c["score"] for c in cells}
    for t in tasks:
        lines.append(f"{t:<22}" + "".join(
            f"{100 * score[(t, n)]:>10.1f}" if (t, n) in score else f"{'-':>10}" for n in lengths))
    if tasks:
        means = []
        for n in lengths:
            vals = [score[(t, n)] for t in tasks if (t, n) in score]
            means.append(f"{100 * sum(vals) / len(vals):>10.1f}" if vals else f"{'-':>10}")
        lines.append(f"{'mean score (%)':<22}" + "".join(means))
    ppl = {p["length"]: p for p in results.get("perplexity", [])}
    if ppl:
        lines.append(f"{'perplexity':<22}" + "".join(
            f"{ppl[n]['ppl']:>10.3f}" if n in ppl and ppl[n]["ppl"] is not None else f"{'-':>10}"
            for n in lengths))
    held = {r["length"]: r for r in results.get("routing", {}).get("heldout", [])}
    if held:
        lines.append(f"{'sparsity (held-out)':<22}" + "".join(
            f"{sum(held[n]['layer_sparsity']) / len(held[n]['layer_sparsity']):>10.3f}"
            if n in held else f"{'-':>10}" for n in lengths))
    dead = results.get("routing", {}).get("dead_layers")
    if dead is not None:
        lines.append(f"layers routing almost nothing (sparsity >= 0.99): {dead or 'none'}")
    return "\n".join(lines)
