"""Gather the runs of a sweep into one table and one plot.

    python -m launch.summarize multirun/tiny/2025-01-01_12-00-00 [--out DIR] [--no-plot]

A run is any directory below the sweep directory with a `summary.json` (finished) or a
`metrics.jsonl` (still running, failed, or waiting to be requeued: its last logged step is
used and its status says so). Writes `sweep_summary.md`, `sweep_summary.csv` and
`sweep_summary.png` (final LM loss against achieved sparsity) into the sweep directory (or
--out) and prints the markdown table.

Columns: the overrides that differ between runs (the ones shared by all runs are listed
above the table), final loss and LM loss, achieved sparsity and its target, steps,
tokens/s, status and the run directory relative to the sweep directory. A run with a
damaged file (an unreadable summary.json or .hydra/overrides.yaml, lines of metrics.jsonl
that are not a step's row, such as the torn last line of a killed run) is listed with what
was passed over in a `notes` column; one without a logged step has the status `no steps`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from l2a.errors import first_line
from train.metrics import bad_lines_note, read_metrics_file

# Overrides that say how a run was launched, not what was trained.
_BOOKKEEPING = ("hydra.", "train.resume=", "train.progress_bar=", "train.wandb.", "local=",
                "local.")

METRIC_COLUMNS = ("final_loss", "final_lm_loss", "sparsity", "sparsity_target", "steps",
                  "tokens_per_s")


class SummaryError(Exception):
    pass


@dataclass
class Run:
    path: Path
    overrides: dict[str, str]
    metrics: dict[str, float | int | None]
    status: str
    notes: list[str] = field(default_factory=list)


def _override_dict(items: list[str]) -> dict[str, str]:
    """key -> value, the last occurrence winning (a requeue may repeat a key)."""
    out: dict[str, str] = {}
    for item in items:
        if not isinstance(item, str) or item.startswith(_BOOKKEEPING):
            continue
        key, sep, value = item.lstrip("+~").partition("=")
        out[key] = value if sep else ""
    return out


def _read_overrides(run_dir: Path, summary: dict, notes: list[str]) -> list[str]:
    if isinstance(summary.get("overrides"), list):
        return summary["overrides"]
    path = run_dir / ".hydra" / "overrides.yaml"
    if path.exists():
        from omegaconf import OmegaConf

        try:
            loaded = OmegaConf.to_container(OmegaConf.load(path))
        except Exception as e:  # noqa: BLE001 - yaml's parser and OmegaConf raise many types
            notes.append(f"unreadable .hydra/overrides.yaml ({first_line(e)})")
            return []
        if isinstance(loaded, list):
            return [str(x) for x in loaded]
    return []


def _read_summary(path: Path, notes: list[str]) -> dict:
    try:
        summary = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        notes.append(f"unreadable summary.json ({first_line(e)})")
        return {}
    if not isinstance(summary, dict):
        notes.append("unreadable summary.json (not a JSON object)")
        return {}
    return summary


def _metrics_of_rows(rows: list[dict]) -> dict:
    """The table's columns from a run's last logged step (mean throughput over its steps)."""
    last = rows[-1] if rows else {}
    speeds = [float(r["tokens_per_s"]) for r in rows if _number(r.get("tokens_per_s")) is not None]
    return {
        "final_loss": _number(last.get("loss")),
        "final_lm_loss": _number(last.get("lm_loss")),
        "sparsity": _number(last.get("sparsity")),
        "sparsity_target": None,
        "steps": _number(last.get("step")),
        "tokens_per_s": sum(speeds) / len(speeds) if speeds else None,
    }


def _number(x) -> float | int | None:
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def load_run(run_dir: Path) -> Run | None:
    """A run's row; a damaged file becomes a note on it (and its status), never an error."""
    summary_path = run_dir / "summary.json"
    metrics_path = run_dir / "metrics.jsonl"
    notes: list[str] = []
    summary = _read_summary(summary_path, notes) if summary_path.exists() else {}
    if summary:
        metrics = {k: _number(summary.get(k)) for k in METRIC_COLUMNS}
        status = "done"
    elif metrics_path.exists():
        try:
            rows, bad = read_metrics_file(metrics_path)
        except OSError as e:
            rows, bad = [], []
            notes.append(f"unreadable metrics.jsonl ({e.strerror or e})")
        if bad:  # a torn last line (killed while writing) or damage
            notes.append(f"metrics.jsonl: {bad_lines_note(bad)}")
        metrics = _metrics_of_rows(rows)
        status = "incomplete" if rows else "no steps"
    elif notes:
        metrics, status = _metrics_of_rows([]), "no steps"
    else:
        return None
    overrides = _override_dict(_read_overrides(run_dir, summary, notes))
    if metrics.get("sparsity_target") is None and "l2a.sparsity_target" in overrides:
        try:
            metrics["sparsity_target"] = float(overrides["l2a.sparsity_target"])
        except ValueError:
            pass
    return Run(run_dir, overrides, metrics, status, notes)


def find_runs(sweep_dir: Path) -> list[Run]:
    if not sweep_dir.is_dir():
        raise SummaryError(f"{sweep_dir}: not a directory")
    candidates = {p.parent for name in ("summary.json", "metrics.jsonl")
                  for p in sweep_dir.rglob(name)}
    # Hidden dirs (.submitit, .hydra) hold logs, not runs.
    candidates = {c for c in candidates
                  if not any(part.startswith(".") for part in c.relative_to(sweep_dir).parts)}
    runs = [r for r in (load_run(c) for c in candidates) if r is not None]
    if not runs:
        raise SummaryError(f"{sweep_dir}: no runs found (no summary.json or metrics.jsonl below it)")

    def order(run: Run):
        rel = run.path.relative_to(sweep_dir).parts
        return [(0, int(p)) if p.isdigit() else (1, p) for p in rel]

    return sorted(runs, key=order)


def _fmt(value, key: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if key == "tokens_per_s":
        return f"{value:.0f}"
    if key == "steps":
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def table(runs: list[Run], sweep_dir: Path) -> tuple[list[str], list[list[str]], dict[str, str]]:
    """Header, rows (strings) and the overrides common to all runs."""
    keys = sorted({k for r in runs for k in r.overrides})
    common = {k: runs[0].overrides[k] for k in keys
              if all(k in r.overrides and r.overrides[k] == runs[0].overrides[k] for r in runs)}
    varying = [k for k in keys if k not in common] if len(runs) > 1 else []
    with_notes = any(r.notes for r in runs)  # a column only where some run is damaged
    header = [*varying, *METRIC_COLUMNS, "status", "run", *(["notes"] if with_notes else [])]
    rows = []
    for r in runs:
        rel = str(r.path.relative_to(sweep_dir)) if r.path != sweep_dir else "."
        rows.append([r.overrides.get(k, "") for k in varying]
                    + [_fmt(r.metrics.get(k), k) for k in METRIC_COLUMNS]
                    + [r.status, rel, *(["; ".join(r.notes)] if with_notes else [])])
    return header, rows, common


def to_markdown(header: list[str], rows: list[list[str]], common: dict[str, str], title: str) -> str:
    out = io.StringIO()
    out.write(f"# Sweep {title}\n\n")
    if common:
        out.write("Shared overrides: " + " ".join(f"`{k}={v}`" for k, v in common.items()) + "\n\n")
    out.write("| " + " | ".join(header) + " |\n")
    out.write("|" + "|".join("---" for _ in header) + "|\n")
    for row in rows:
        out.write("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |\n")
    return out.getvalue()


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def plot(runs: list[Run], path: Path, title: str) -> Path | None:
    points = []
    for r in runs:
        y = r.metrics.get("final_lm_loss")
        if y is None:
            y = r.metrics.get("final_loss")
        x = r.metrics.get("sparsity")
        if x is not None and y is not None:
            points.append((x, y, r))
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    done = sorted((x, y) for x, y, r in points if r.status == "done")
    if len(done) > 1:  # the loss-sparsity trade-off, left to right
        ax.plot(*zip(*done), color="C0", alpha=0.4, lw=1)
    seen: dict[tuple[float, float], int] = {}
    for x, y, r in points:
        marker = "o" if r.status == "done" else "x"
        ax.scatter([x], [y], marker=marker, color="C0" if r.status == "done" else "C3")
        target = r.metrics.get("sparsity_target")
        label = f"target {target:g}" if target is not None else r.path.name
        if r.status != "done":
            label += " (incomplete)"
        nth = seen.get((round(x, 4), round(y, 4)), 0)  # stack labels of coinciding points
        seen[(round(x, 4), round(y, 4))] = nth + 1
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4 + 10 * nth), fontsize=8)
    ax.set_xlabel("achieved sparsity (fraction of tokens without global attention)")
    ax.set_ylabel("final LM loss")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summarize(sweep_dir: str | Path, out_dir: str | Path | None = None,
              make_plot: bool = True) -> dict[str, Path]:
    sweep_dir = Path(sweep_dir)
    out = Path(out_dir) if out_dir else sweep_dir
    runs = find_runs(sweep_dir)
    header, rows, common = table(runs, sweep_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(header, rows, common, str(sweep_dir))
    paths = {"markdown": out / "sweep_summary.md", "csv": out / "sweep_summary.csv"}
    paths["markdown"].write_text(md)
    write_csv(paths["csv"], header, rows)
    if make_plot:
        png = plot(runs, out / "sweep_summary.png", str(sweep_dir))
        if png is not None:
            paths["plot"] = png
    return paths


def print_sweep_summary(sweep_dir: str | Path, file=None) -> None:
    """The end of a sweep (`python -m train -m ...`, `hydra/launcher=local`): write the
    summary files and print the table, so that the results are on the screen when it ends."""
    out = file or sys.stdout
    try:
        paths = summarize(sweep_dir)
    except (SummaryError, OSError) as e:  # a summary never turns a finished sweep into a failure
        print(f"warning: no sweep summary ({e})", file=sys.stderr, flush=True)
        return
    print("\n" + paths["markdown"].read_text(), end="", file=out)
    print(f"summary: {paths['markdown']}", file=out, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.summarize", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", help="a multirun directory (or any directory of runs)")
    parser.add_argument("--out", help="where to write the files (default: the sweep directory)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    args = parser.parse_args(argv)
    try:
        paths = summarize(args.sweep_dir, args.out, make_plot=not args.no_plot)
    except SummaryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a read-only or full sweep directory: --out elsewhere
        print(f"error: {e.filename or args.out or args.sweep_dir}: cannot write the summary "
              f"({e.strerror or e})", file=sys.stderr)
        return 1
    print(paths["markdown"].read_text(), end="")
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
