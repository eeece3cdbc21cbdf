"""Perplexity by position for the study's report: from the unpruned evaluations' own results
(`logs/eval-results-<arm>-<len>-seed<s>.json`, as written by `python -m eval`), the
per-bucket perplexity at the trained length, averaged over seeds; a table and a plot.

A run folder without those files gets neither (older study runs kept only the logs).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from study.arms import ARM_NAMES, ARM_ORDER
from study.plotting import save_figure

RESULTS_NAME = re.compile(r"eval-results-(?P<arm>[A-Za-z0-9_]+)-(?P<k>\d+)k-seed(?P<seed>\d+)\.json")


def load_position(d: Path) -> list[dict]:
    """One record per unpruned evaluation in `d/logs`: arm, train_length, seed and its
    `perplexity_by_position` buckets ({length, bucket, start, end, tokens, loss, ppl})."""
    out = []
    for p in sorted((d / "logs").glob("eval-results-*.json")):
        m = RESULTS_NAME.fullmatch(p.name)
        data = json.loads(p.read_text()) if m else {}
        if data.get("perplexity_by_position"):
            out.append({"arm": m["arm"], "train_length": int(m["k"]) * 1024,
                        "seed": int(m["seed"]), "buckets": data["perplexity_by_position"],
                        "rows": {x["length"]: x.get("rows") for x in data.get("perplexity", [])}})
    return out


def _eval_length(recs: list[dict], train_length: int) -> int | None:
    """The trained length where every seed has it, else the longest length every seed has."""
    common = set.intersection(*({b["length"] for b in r["buckets"] if b["ppl"] is not None}
                                for r in recs))
    return train_length if train_length in common else max(common, default=None)


def summarize_position(recs: list[dict]) -> dict:
    """(arm, train_length) -> {eval_length, seeds, rows (held-out rows per seed), buckets:
    [(start, end)], ppl: [mean over seeds of each seed's perplexity in that bucket]}."""
    groups: dict[tuple, list[dict]] = {}
    for r in recs:
        groups.setdefault((r["arm"], r["train_length"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        n = _eval_length(rs, key[1])
        if n is None:
            continue
        cells: dict[tuple, list[float]] = {}
        for r in rs:
            for b in r["buckets"]:
                if b["length"] == n and b["ppl"] is not None:
                    cells.setdefault((b["start"], b["end"]), []).append(float(b["ppl"]))
        spans = sorted(cells)
        rows = sorted({r["rows"].get(n) for r in rs} - {None})
        out[key] = {"eval_length": n, "seeds": len(rs), "rows": rows, "buckets": spans,
                    "ppl": [sum(cells[s]) / len(cells[s]) for s in spans]}
    return out


def _tokens(n: int) -> str:
    return f"{n / 1024:g}K" if n >= 1024 else str(n)


def _order(key: tuple) -> tuple:
    return (key[1], ARM_ORDER.index(key[0]) if key[0] in ARM_ORDER else 99)


def position_table(summary: dict) -> list[str]:
    """One table per bucket layout (the 8K and 16K runs' buckets differ), a row per arm x
    trained length."""
    if not summary:
        return []
    out = ["#### Perplexity by position", "",
           "Held-out perplexity per position bucket (8 equal spans of the row) at the evaluation "
           "length equal to the trained length (the longest evaluated with perplexity), from "
           "`logs/eval-results-*.json` (unpruned models): the mean over seeds of each seed's "
           "perplexity in the bucket; n = seeds.", ""]
    layouts: dict[tuple, list[tuple]] = {}
    for key in sorted(summary, key=_order):
        s = summary[key]
        layouts.setdefault((s["eval_length"], tuple(s["buckets"])), []).append(key)
    for (length, spans), keys in sorted(layouts.items()):
        rows = sorted({r for k in keys for r in summary[k]["rows"]})
        held = (f" ({'/'.join(map(str, rows))} held-out row{'' if rows == [1] else 's'} per seed)"
                if rows else "")
        out += [f"Evaluated at {length} tokens{held}:", "",
                "| arm | trained at | n | " + " | ".join(f"{_tokens(a)}-{_tokens(b)}"
                                                       for a, b in spans) + " |",
                "|---|---:|---:|" + "---:|" * len(spans)]
        for arm, train_length in keys:
            s = summary[(arm, train_length)]
            out.append(f"| {ARM_NAMES.get(arm, arm)} | {train_length} | {s['seeds']} | "
                       + " | ".join(f"{v:.3f}" for v in s["ppl"]) + " |")
        out.append("")
    return out


def position_plot(summary: dict, out_dir: Path) -> Path | None:
    """ppl_by_position.png: perplexity against the bucket centre, a line per arm, a panel per
    trained length."""
    if not summary:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({k[1] for k in summary})
    fig, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 3.6), squeeze=False)
    for ax, length in zip(axes[0], lengths):
        for key in sorted((k for k in summary if k[1] == length), key=_order):
            s = summary[key]
            ax.plot([(a + b) / 2 for a, b in s["buckets"]], s["ppl"], marker="o",
                    label=f"{ARM_NAMES.get(key[0], key[0])} (n={s['seeds']})")
        evaluated = sorted({summary[k]["eval_length"] for k in summary if k[1] == length})
        ax.set(title=f"extended to {length}, evaluated at {'/'.join(map(str, evaluated))}",
               xlabel="position in the row (bucket centre, tokens)", ylabel="perplexity")
        ax.legend(fontsize=7)
    return save_figure(fig, out_dir / "ppl_by_position.png")
