"""study/RESULTS.md from the study's records: the answer first (the newest study run's
ratios to dense with their intervals and verdicts, study/answer.py, and one plot), then how
it is computed, the recipe, the commands, and the history of every study run (per run: the
tables over seeds, arm x length: retrieval, perplexity, sparsity, KV bytes, GPU time, and
its plots), computed from what the files hold and nothing else.

    python -m study report [--results study/results] [--samples-dir DIR] [--out study/RESULTS.md]

Inputs: `pretrain-seed<s>.json` and `run-<arm>-<length>[-base<b>]-seed<s>.json` as written
by study/steps.py (a run's `evals` maps the pruned fraction ("0.0", "0.25", ...) to the
parsed evaluation, or to {"skipped": reason} / {"failed": reason}); the per-sample records
(study/samples.py) of study/results/<run>/ in its samples/ (of study/results/ itself in
study/results/samples/), or, with --samples-dir, in <samples-dir>/<run>/ (and <samples-dir>/).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from study import answer
from study.answer import MIN_DENSE_SCORE, SPARSITY_BAR
from study.arms import ARM_NAMES, ARM_ORDER
from study.plotting import save_figure
from study.position import load_position, position_plot, position_table, summarize_position
from study.samples import FROM_LOGS, load_records, records_dir
from study.stats import BAR as RATIO_BAR

BAR = (SPARSITY_BAR, RATIO_BAR)  # L2A at >= 80% sparsity keeps >= 97% of dense retrieval


def load(results_dir: Path) -> tuple[list[dict], list[dict]]:
    pre = [json.loads(p.read_text()) for p in sorted(results_dir.glob("pretrain-seed*.json"))]
    runs = [json.loads(p.read_text()) for p in sorted(results_dir.glob("run-*.json"))]
    return pre, runs


def spread(values: list[float]) -> tuple[float, float, int]:
    """(mean, half the range, n): with two seeds the half-range is the distance of each
    seed from the mean."""
    n = len(values)
    mean = sum(values) / n
    return mean, (max(values) - min(values)) / 2, n


def _fmt(s: tuple[float, float, int] | None, digits: int = 3) -> str:
    if s is None:
        return "-"
    mean, half, n = s
    return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if n > 1 else "") + f" (n={n})"


def _usable(ev: dict | None) -> bool:
    return bool(ev) and "skipped" not in ev and "failed" not in ev


def summarize(runs: list[dict]) -> dict:
    """(arm, train_length, pruned) -> metrics over seeds."""
    groups: dict[tuple, list[tuple[dict, dict | None]]] = {}
    for r in runs:
        evals = r.get("evals") or {}
        for frac in sorted(set(evals) | {"0.0"}, key=float):
            key = (r["arm"], r["train_length"], float(frac))
            groups.setdefault(key, []).append((r, evals.get(frac)))
    out = {}
    for key, items in groups.items():
        trains = [r["train"] for r, _ in items if key[2] == 0.0]
        evs = [e for _, e in items if _usable(e)]
        notes = sorted({e.get("skipped") or e.get("failed") for _, e in items
                        if e and not _usable(e)})
        lengths = sorted({int(n) for e in evs for n in e.get("retrieval", {})}
                         | {int(n) for e in evs for n in e.get("perplexity", {})})
        row = {"seeds": len(items), "notes": notes, "by_length": {}}
        for n in lengths:
            cell = {}
            for metric in ("retrieval", "perplexity", "kv_bytes"):
                vals = [float(e[metric][str(n)]) for e in evs if str(n) in e.get(metric, {})]
                cell[metric] = spread(vals) if vals else None
            row["by_length"][n] = cell
        prunes = [e["prune"] for _, e in items if e and e.get("prune")]
        if prunes:
            kv = [p["kv_bytes"] for p in prunes]
            row["prune"] = {"kept": sorted({len(p["kept_global_layers"]) for p in prunes}),
                            "context": sorted({k["context"] for k in kv}),
                            "before": spread([k["before"] for k in kv]),
                            "after": spread([k["after"] for k in kv])}
        layer = [e["layer_sparsity"] for e in evs if e.get("layer_sparsity")]
        row["heldout_layer_sparsity"] = ([sum(c) / len(c) for c in zip(*layer)] if layer else None)
        row["heldout_sparsity"] = (spread([sum(x) / len(x) for x in layer]) if layer else None)
        if trains:
            row["train_sparsity"] = spread([t["sparsity"] or 0.0 for t in trains])
            row["train_layer_sparsity"] = ([sum(c) / len(c) for c in
                                            zip(*[t["layer_sparsity"] for t in trains])]
                                           if all(t["layer_sparsity"] for t in trains) else None)
            row["lm_loss"] = spread([t["final_lm_loss"] for t in trains
                                     if t["final_lm_loss"] is not None] or [float("nan")])
            row["gpu_time_s"] = spread([t["gpu_time_s"] for t in trains])
            row["steps"] = sorted({t["steps"] for t in trains})
            row["completed"] = all(t["completed"] for t in trains)
        out[key] = row
    return out


def headline(rows: dict) -> list[str]:
    """The bar on the means over seeds, per train length and L2A arm, from the run records
    (no interval: the answer's intervals come from the per-sample records)."""
    lines = []
    for length in sorted({k[1] for k in rows}):
        dense = rows.get(("dense", length, 0.0), {}).get("by_length", {}).get(length, {})
        d = (dense.get("retrieval") or (None,))[0]
        for arm in ARM_ORDER[1:]:
            row = rows.get((arm, length, 0.0))
            if row is None:
                continue
            cell = row["by_length"].get(length, {}).get("retrieval")
            s = row.get("heldout_sparsity") or row.get("train_sparsity")
            where = "held-out" if row.get("heldout_sparsity") else "training"
            if d == 0:
                lines.append(f"- {ARM_NAMES[arm]} at {length}: the dense arm scores 0 at {length}; "
                             "no ratio" + ("" if cell else f" (and {ARM_NAMES[arm]} has no complete "
                                                           "evaluation)") + ".")
                continue
            if d is not None and d < MIN_DENSE_SCORE:
                lines.append(f"- {ARM_NAMES[arm]} at {length}: not testable: the dense arm scores "
                             f"{d:.3f} at {length}, below {MIN_DENSE_SCORE} (it has not learned "
                             "the tasks); " + (f"{ARM_NAMES[arm]} scores {cell[0]:.3f}."
                                               if cell else "no score for it either."))
                continue
            if cell is None or d is None:
                lines.append(f"- {ARM_NAMES[arm]} at {length}: no retrieval score at {length} "
                             "for it or for the dense arm: not evaluated.")
                continue
            ratio = cell[0] / d
            sparse_enough = s is not None and s[0] >= BAR[0]
            verdict = ("meets the bar on the means" if ratio >= BAR[1] and sparse_enough else
                       "misses the bar on the means" + ("" if sparse_enough else
                                                        f" (sparsity {s[0]:.2f} < {BAR[0]})" if s else ""))
            lines.append(f"- {ARM_NAMES[arm]} at {length}: retrieval {cell[0]:.3f} vs dense "
                         f"{d:.3f} = {ratio:.1%} of dense, sparsity "
                         f"{'n/a' if s is None else f'{s[0]:.3f}'} ({where}): {verdict}.")
    return lines


def plots(rows: dict, out_dir: Path) -> list[Path]:
    """PNGs of what exists: retrieval against length per arm, sparsity per layer, retrieval
    against the pruned fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    lengths = sorted({k[1] for k in rows})
    have_scores = any(c.get("retrieval") for r in rows.values() for c in r["by_length"].values())
    if have_scores:
        fig, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 3.6), squeeze=False)
        for ax, length in zip(axes[0], lengths):
            for arm in ARM_ORDER:
                row = rows.get((arm, length, 0.0))
                pts = [(n, c["retrieval"]) for n, c in sorted((row or {}).get("by_length", {}).items())
                       if c.get("retrieval")]
                if pts:
                    ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts],
                                yerr=[p[1][1] for p in pts], marker="o", capsize=3,
                                label=ARM_NAMES[arm])
            ax.axvline(length, color="grey", lw=0.8, ls="--")
            ax.set_xscale("log", base=2)
            ax.set(title=f"extended to {length}", xlabel="context length (tokens)",
                   ylabel="retrieval score", ylim=(0, 1.05))
            ax.legend(fontsize=7)
        made.append(save_figure(fig, out_dir / "retrieval_by_length.png"))
    sparse = {k: r.get("heldout_layer_sparsity") or r.get("train_layer_sparsity")
              for k, r in rows.items() if k[0] != "dense" and k[2] == 0.0}
    sparse = {k: v for k, v in sparse.items() if v}
    if sparse:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for (arm, length, _), v in sorted(sparse.items()):
            ax.plot(range(len(v)), v, marker="o", label=f"{ARM_NAMES[arm]}, {length}")
        ax.set(xlabel="layer", ylabel="sparsity (tokens skipping global)", ylim=(0, 1.02),
               title="sparsity per layer")
        ax.legend(fontsize=7)
        made.append(save_figure(fig, out_dir / "sparsity_per_layer.png"))
    pruned = {}
    for (arm, length, frac), r in rows.items():
        cell = r["by_length"].get(length, {}).get("retrieval")
        if arm != "dense" and cell:
            pruned.setdefault((arm, length), []).append((frac, cell[0]))
    if any(len(v) > 1 for v in pruned.values()):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for (arm, length), pts in sorted(pruned.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    label=f"{ARM_NAMES[arm]}, {length}")
        ax.set(xlabel="fraction of layers pruned to local-only",
               ylabel="retrieval at the trained length", ylim=(0, 1.05))
        ax.legend(fontsize=7)
        made.append(save_figure(fig, out_dir / "retrieval_vs_pruned.png"))
    return made


def _key_sort(k):
    return (k[1], ARM_ORDER.index(k[0]) if k[0] in ARM_ORDER else 99, k[2])


def tables(pre: list[dict], rows: dict) -> list[str]:
    out = []
    if pre:
        out += ["#### Base pretraining", "",
                "| seed | scale | steps | tokens | final lm loss (nats/byte) | GPU s | completed |",
                "|---:|---|---:|---:|---:|---:|---|"]
        for p in pre:
            t = p["train"]
            loss = "-" if t["final_lm_loss"] is None else f"{t['final_lm_loss']:.4f}"
            out.append(f"| {p['seed']} | {p.get('scale', 'full')} | {t['steps']} | {t['tokens']:,} | "
                       f"{loss} | {t['gpu_time_s']} | {t['completed']} |")
        out.append("")
    train_rows = [(k, r) for k, r in sorted(rows.items(), key=lambda kv: _key_sort(kv[0]))
                  if k[2] == 0.0 and "gpu_time_s" in r]
    if train_rows:
        out += ["#### Extension runs (training)", "",
                "| arm | length | seeds | steps | final lm loss | sparsity (training, last step) | GPU s per run | all completed |",
                "|---|---:|---:|---|---|---|---|---|"]
        for (arm, length, _), r in train_rows:
            out.append(f"| {ARM_NAMES.get(arm, arm)} | {length} | {r['seeds']} | "
                       f"{','.join(map(str, r['steps']))} | {_fmt(r['lm_loss'], 4)} | "
                       f"{_fmt(r['train_sparsity'])} | {_fmt(r['gpu_time_s'], 1)} | {r['completed']} |")
        out.append("")
    pruned = [(k, r["prune"]) for k, r in sorted(rows.items(), key=lambda kv: _key_sort(kv[0]))
              if r.get("prune")]
    if pruned:
        out += ["#### Pruning (python -m train.prune)", "",
                "| arm | trained at | pruned | global branches kept | KV MiB before | KV MiB after | after / before | at context |",
                "|---|---:|---:|---|---:|---:|---:|---|"]
        for (arm, length, frac), p in pruned:
            b, a = p["before"][0] / 2**20, p["after"][0] / 2**20
            out.append(f"| {ARM_NAMES.get(arm, arm)} | {length} | {frac:g} | "
                       f"{','.join(map(str, p['kept']))} | {b:.1f} | {a:.1f} | {a / b:.3f} | "
                       f"{','.join(map(str, p['context']))} |")
        out.append("")
    eval_rows = [(k, r) for k, r in sorted(rows.items(), key=lambda kv: _key_sort(kv[0]))]
    lines = []
    for (arm, length, frac), r in eval_rows:
        for n, c in sorted(r["by_length"].items()):
            kv = c.get("kv_bytes")
            kv_s = "-" if kv is None else f"{kv[0] / 2**20:.1f}"
            lines.append(f"| {ARM_NAMES.get(arm, arm)} | {length} | {frac:g} | {n} | "
                         f"{_fmt(c.get('retrieval'))} | {_fmt(c.get('perplexity'), 2)} | "
                         f"{_fmt(r.get('heldout_sparsity'))} | {kv_s} |")
        if not r["by_length"]:
            why = "; ".join(r["notes"]) or "no evaluation recorded"
            lines.append(f"| {ARM_NAMES.get(arm, arm)} | {length} | {frac:g} | - | "
                         f"not evaluated: {why} | - | - | - |")
    if lines:
        out += ["#### Evaluation (arm x length)", "",
                "Mean over seeds ± half the range between them, n = seeds.", "",
                "| arm | trained at | pruned | eval length | retrieval | perplexity | sparsity (held-out) | KV MiB |",
                "|---|---:|---:|---:|---|---|---|---:|", *lines, ""]
    return out


def run_tables(runs: list[dict]) -> list[str]:
    """One row per run (arm x length x seed): training, then what stopped evaluations had
    measured (their log's samples and perplexity)."""
    order = sorted(runs, key=lambda r: (r["train_length"], ARM_ORDER.index(r["arm"])
                                        if r["arm"] in ARM_ORDER else 99, r["seed"]))
    out = ["#### Extension runs, one row per seed", "",
           "| arm | length | seed | steps | tokens | sparsity (training, last step) | final lm loss | GPU s | tokens/s | completed |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in order:
        t = r["train"]
        loss = "-" if t.get("final_lm_loss") is None else f"{t['final_lm_loss']:.4f}"
        rate = f"{t['tokens_per_s']:,}" if t.get("tokens_per_s") else "-"
        out.append(f"| {ARM_NAMES.get(r['arm'], r['arm'])} | {r['train_length']} | {r['seed']} | "
                   f"{t['steps']} | {t['tokens']:,} | {t['sparsity'] or 0:.3f} | {loss} | "
                   f"{t['gpu_time_s']} | {rate} | {t['completed']} |")
    out.append("")
    stopped = []
    for r in order:
        for frac, ev in sorted((r.get("evals") or {}).items(), key=lambda kv: float(kv[0])):
            part = (ev or {}).get("partial")
            if not part:
                continue
            scores = [x["score"] for x in part["samples"]]
            ppl = ", ".join(f"{n}: {v:.2f}" for n, v in sorted(part["perplexity"].items(),
                                                                 key=lambda kv: int(kv[0])))
            mean = f"{sum(scores) / len(scores):.2f}" if scores else "-"
            lengths = sorted({x["length"] for x in part["samples"]})
            stopped.append(f"| {ARM_NAMES.get(r['arm'], r['arm'])} | {r['train_length']} | "
                           f"{r['seed']} | {float(frac):g} | {len(scores)} "
                           f"({', '.join(map(str, lengths))}) | {mean} | {ppl or '-'} | "
                           f"{ev['failed'].split(':')[0]} |")
    if stopped:
        out += ["#### Evaluations stopped before the end (what their logs hold)", "",
                "| arm | length | seed | pruned | samples scored (lengths) | mean score | perplexity by length | stopped |",
                "|---|---:|---:|---:|---|---:|---|---|", *stopped, ""]
    return out


# The recipe, the commands and how to read the tables: the page's fixed part (a template
# file, so that it reads and diffs as Markdown), above the sections of each study run.
STATIC = (Path(__file__).with_name("report_template.md")).read_text(encoding="utf-8")


def _has_records(d: Path) -> bool:
    return any(d.glob("pretrain-seed*.json")) or any(d.glob("run-*.json"))


def result_sets(results_dir: Path) -> list[Path]:
    """The folders holding one study run's records each, oldest first: the subfolders (one
    per study run, by name), then the results folder itself (a run written there has not
    been moved into a folder of its own yet: the newest)."""
    subs = sorted(d for d in results_dir.iterdir() if d.is_dir()) if results_dir.is_dir() else []
    return [d for d in [*subs, results_dir] if _has_records(d)]


def samples_dir_of(d: Path, results_dir: Path, samples_root: Path | None = None) -> Path:
    """Where the per-sample records of the study run in `d` are: its own samples/, or, under
    a given root holding every run's records, <root>/<run>/ (the results folder's own
    run: <root> itself)."""
    if samples_root is None:
        return records_dir(d)
    return samples_root if d.resolve() == results_dir.resolve() else samples_root / d.name


ANSWER_MARK = "<!-- the answer -->"


def _about(d: Path) -> dict:
    return json.loads((d / "about.json").read_text()) if (d / "about.json").exists() else {}


def data_note(runs: list[dict], records: list[dict]) -> str:
    """What the run's records hold: seeds, bases, samples per model and length, teacher-forced
    scores, where the per-sample lines came from; said plainly where they fall short of the
    study's defaults."""
    gen = [r for r in records if answer.em(r) is not None and float(r["pruned"]) == 0.0]
    per_model: dict[tuple, int] = {}
    for r in gen:
        k = (r["arm"], r["train_length"], r.get("base_seed", 0), r["seed"], r["eval_length"])
        per_model[k] = per_model.get(k, 0) + 1
    counts = sorted(set(per_model.values()))
    bases = sorted({r.get("base_seed", 0) for r in runs})
    seeds = sorted({r["seed"] for r in runs})
    forced = sum(r.get("token_acc") is not None for r in records)
    pruned_lines = any(float(r["pruned"]) > 0 for r in records)
    n = counts[0] if len(counts) == 1 else None
    text = (f"**What this run holds.** {len(seeds)} extension seed{'s' if len(seeds) > 1 else ''} "
            f"({', '.join(map(str, seeds))}) of {len(bases)} base{'s' if len(bases) > 1 else ''} "
            f"(base seed {', '.join(map(str, bases))}); "
            + (f"{n} generated samples per model and length (one sample moves a model's mean "
               f"at a length by {1 / n:.2f})" if n else
               f"{counts[0]}-{counts[-1]} generated samples per model and length" if counts else
               "no generated samples")
            + (f"; {forced} teacher-forced scores." if forced else "; no teacher-forced scores.")
            + " ")
    if any(r.get("source") == FROM_LOGS for r in records):
        text += ("Its per-sample records were derived afterwards (`python -m study "
                 "derive-samples`) from the unpruned evaluations' results.json it kept in "
                 "`logs/`: exact match only (the run predates the teacher-forced scores)"
                 + ("" if pruned_lines else ", and none for the pruned models, whose "
                    "evaluations kept only their mean per length: the pruning rows have no "
                    "interval") + ". ")
    text += (f"The study's defaults are {len(answer.SEEDS)} extension seeds x "
             f"{len(answer.BASE_SEEDS)} bases and {answer.PLAN_SAMPLES} generated samples per "
             f"model and length (plus teacher-forced ones); the sample sizes that would "
             f"decide are computed for {answer.PLAN_UNITS} seed units, from this run's "
             "variance" + (": with this few seed units the spread between seeds rests on one "
                           "or two degrees of freedom, so those sizes are a rough guide, which "
                           "the next run's own variance replaces" if len(seeds) * len(bases) < 4
                           else "") + ".\n")
    return text


def answer_section(d: Path, records: list[dict], page: Path, samples_dir: Path) -> str:
    """The top of the page: the newest study run's verdicts, table, plot and companions."""
    _, runs = load(d)
    about = _about(d)
    rel = os.path.relpath(d, page.parent)
    text = "## The answer\n\n"
    if not records:
        return text + (f"The newest study run ({about.get('title', d.name)}, `{rel}/`) has no "
                       "per-sample records, so no intervals: its means are in its section "
                       "below. `python -m study eval` writes them; `python -m study "
                       "derive-samples` derives them from a run's kept results.\n\n")
    rows = answer.headline_rows(runs, records)
    beyond = answer.extrapolation_rows(runs, records)
    text += (f"From the newest study run: **{about.get('title', d.name)}** (records `{rel}/`, "
             f"per-sample lines `{os.path.relpath(samples_dir, page.parent)}/`).\n\n")
    text += "\n".join(answer.summary_lines(rows)) + "\n\n"
    text += "\n".join(answer.headline_table(rows)) + "\n\n"
    text += ("Retrieval: mean exact match over the paired samples of every task at the trained "
             "length (the interval of the mean by the same bootstrap); n: paired samples "
             "(seed units x samples per unit); sparsity and perplexity: mean over seeds with "
             "Student's t interval (n = seeds); KV: per sequence at the trained length, bf16, "
             "after pruning half of the layers to local-only (a fraction of the unpruned "
             "cache).\n\n")
    plot = answer.answer_plot(rows, beyond, d / "answer.png")
    if plot:
        text += f"![ratio to dense]({os.path.relpath(plot, page.parent)})\n\n"
    text += data_note(runs, records) + "\n"
    if beyond:
        text += ("### Beyond the trained length\n\nThe same comparison at evaluation lengths "
                 "above the one each model was extended to (no sparsity condition: the question "
                 "is whether L2A keeps what dense loses).\n\n"
                 + "\n".join(answer.extrapolation_table(beyond)) + "\n\n")
    pruned = answer.prune_rows(runs, records)
    if pruned:
        text += ("### Pruning\n\nEach pruned model against its own unpruned model at the "
                 "trained length (the same base, seed and samples).\n\n"
                 + "\n".join(answer.prune_table(pruned)) + "\n\n")
    cont = answer.continuous_table(runs, records)
    text += "### Teacher-forced scores\n\n" + (
        "\n".join(cont) + "\n\n" if cont else
        "None recorded in this run (its evaluations predate `eval.teacher_forced`).\n\n")
    return text


def render_set(d: Path, page: Path, records: list[dict] | None = None,
               is_answer: bool = False) -> str:
    """One study run: what it was (about.json: title, commands, notes), the headline, the tables
    and the plots (written into `d`)."""
    pre, runs = load(d)
    rows = summarize(runs)
    by_position = summarize_position(load_position(d))
    made = plots(rows, d) if rows else []
    made += [p for p in [position_plot(by_position, d)] if p]
    about = _about(d)
    text = f"### {about.get('title', d.name)}\n\n"
    text += f"Records: `{os.path.relpath(d, page.parent)}/` ({len(pre)} pretraining, {len(runs)} extension runs).\n\n"
    scales = sorted({p.get("scale", "full") for p in pre} | {r.get("scale", "full") for r in runs})
    if scales != ["full"]:
        text += (f"**These results are from `--scale {'/'.join(scales)}` runs** (the CPU smoke "
                 "test's tiny model), not the study.\n\n")
    if about.get("commands"):
        text += "Commands:\n\n```bash\n" + "\n".join(about["commands"]) + "\n```\n\n"
    text += "".join(f"- {n}\n" for n in about.get("notes", [])) + ("\n" if about.get("notes") else "")
    lines = headline(rows)
    tested = any("of dense" in x for x in lines)
    text += "#### Headline on the means\n\n" + ("\n".join(lines) or "No evaluated runs.") + "\n\n"
    if is_answer:
        text += ("This run gives the answer at the top of the page: its intervals and "
                 "verdicts are there.\n\n")
    elif records:
        rows_ci = answer.headline_rows(runs, records)
        text += ("With 95% intervals from its per-sample records:\n\n"
                 + "\n".join(answer.headline_table(rows_ci)) + "\n\n")
    if not tested:
        text += ("**The bar was not tested:** no L2A arm has a retrieval score to set against a "
                 f"dense score of at least {MIN_DENSE_SCORE} at the extended length.\n\n")
    text += "\n".join(tables(pre, rows) + position_table(by_position)) + "\n"
    if runs:
        text += "\n".join(run_tables(runs)) + "\n"
    if made:
        text += "#### Plots\n\n" + "\n".join(
            f"![{p.stem}]({os.path.relpath(p, page.parent)})" for p in made) + "\n\n"
    return text


def render(results_dir: Path, page: Path, samples_root: Path | None = None) -> str:
    sets = result_sets(results_dir)
    if not sets:
        return STATIC.replace(ANSWER_MARK, (
            "## The answer\n\n**Not run yet.** No training or evaluation results exist in "
            "`study/results/` (`corpus.json` there is the manifest of the corpus "
            "the data were prepared from): the study has not been run on a GPU, and "
            "the answer, tables and plots appear here once it has (`python -m study "
            "report`).\n"))
    records = {d: load_records(samples_dir_of(d, results_dir, samples_root)) for d in sets}
    newest = sets[-1]
    text = STATIC.replace(ANSWER_MARK, answer_section(
        newest, records[newest], page, samples_dir_of(newest, results_dir, samples_root)))
    return text + "\n".join(render_set(d, page, records[d], d == newest) for d in sets)


def write_report(results_dir: Path, out: Path, samples_root: Path | None = None) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render(results_dir, out, samples_root))
    os.replace(tmp, out)
    print(f"wrote {out}")
    return out
