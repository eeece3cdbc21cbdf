"""Rank-0 logging: `metrics.jsonl`, a tqdm bar, wandb, and the per-layer sparsity plot.

wandb is optional (imported lazily; a missing package only disables it) and offline unless
`train.wandb.mode`, `WANDB_MODE` or `WANDB_API_KEY` say otherwise.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "sparsity_per_layer.png"
LOSS_PLOT_FILE = "loss.png"


def run_name(name: str, overrides: list[str]) -> str:
    """`tiny` + `l2a.sparsity_target=0.5` -> `tiny:l2a.sparsity_target=0.5`."""
    extra = [o for o in overrides if not o.lstrip("+~").startswith(("experiment=", "hydra."))]
    return name + (":" + ",".join(extra) if extra else "")


def _plain(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN / inf
    return v


def read_metrics_file(path: str | os.PathLike) -> tuple[list[dict], list[int]]:
    """(rows, numbers of the lines that are not a step's row) of a metrics.jsonl.

    A line is written whole and flushed, but a run killed (or out of disk) while writing
    leaves a torn last line, and an edited file may hold anything: such lines are not
    rows, and the caller says how many it passed over."""
    rows, bad = [], []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                row = None
            step = row.get("step") if isinstance(row, dict) else None
            if isinstance(step, int) and not isinstance(step, bool):
                rows.append(row)
            else:
                bad.append(n)
    return rows, bad


def bad_lines_note(bad: list[int]) -> str:
    """`2 unreadable lines (3, 7)`: what a reader of metrics.jsonl passed over."""
    shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
    return f"{len(bad)} unreadable line{'s' if len(bad) > 1 else ''} ({shown})"


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of a run's metrics.jsonl ([] without one), unreadable lines left out."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return read_metrics_file(path)[0]


def progress_line(row: dict, total_steps: int) -> str:
    """`step 10/100 loss 5.1234 lm 5.1200 sparsity 0.312 lr 3.0e-04 grad 0.812 1234 tok/s`."""
    def num(key: str, fmt: str) -> str:
        v = row.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)

    parts = [f"step {row.get('step')}/{total_steps}", f"loss {num('loss', '.4f')}",
             f"lm {num('lm_loss', '.4f')}", f"sparsity {num('sparsity', '.3f')}",
             f"lr {num('lr', '.1e')}", f"grad {num('grad_norm', '.3f')}"]
    if "tokens_per_s" in row:
        parts.append(f"{num('tokens_per_s', '.0f')} tok/s")
    if row.get("skipped"):
        parts.append("skipped")
    return " ".join(parts)


def wandb_mode(configured: str | None) -> str:
    if configured:
        return configured
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class MetricsLogger:
    """Writes one JSON object per optimizer step; no-op on ranks other than 0."""

    def __init__(self, run_dir: Path, enabled: bool, total_steps: int, start_step: int,
                 progress_bar: bool = True, wandb_cfg=None, name: str = "run",
                 overrides: list[str] | None = None, config: dict | None = None):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self._bar = None
        self._wandb = None
        self.loss_plot: Path | None = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._truncate_after(start_step)
        self._file = open(self.path, "a")
        self.total_steps = total_steps
        # train.log gets a progress line about 50 times per run (and at the last step).
        self.progress_every = max(1, total_steps // 50)
        if progress_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc=name, unit="step",
                             dynamic_ncols=True, file=sys.stderr, mininterval=0.5)
        if wandb_cfg is not None:
            self._init_wandb(wandb_cfg, name, overrides or [], config or {})

    def _truncate_after(self, step: int) -> None:
        """A resumed run redoes the steps after its checkpoint: drop their old lines."""
        if not self.path.exists():
            return
        rows, bad = read_metrics_file(self.path)
        if bad:  # e.g. the torn last line of a run killed while writing it
            print(f"warning: {self.path}: dropped {bad_lines_note(bad)} on resume",
                  file=sys.stderr, flush=True)
        keep = [m for m in rows if m["step"] <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(m) + "\n" for m in keep))
        os.replace(tmp, self.path)

    def _init_wandb(self, cfg, name: str, overrides: list[str], config: dict) -> None:
        mode = wandb_mode(cfg.mode)
        if mode == "disabled":
            return
        try:
            import wandb
        except ImportError:
            print("wandb is not installed: logging to metrics.jsonl only", file=sys.stderr)
            return
        id_file = self.run_dir / "wandb_id.txt"
        # A requeued job continues the same wandb run.
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(6)
        id_file.write_text(run_id)
        def init(mode: str):
            return wandb.init(
                project=cfg.project, entity=cfg.entity, name=run_name(name, overrides),
                group=name, tags=list(cfg.tags), dir=str(self.run_dir), config=config,
                mode=mode, id=run_id, resume="allow",
                settings=wandb.Settings(console="off", silent=True,
                                        init_timeout=getattr(cfg, "init_timeout", 90.0)))

        try:
            self._wandb = init(mode)
        except Exception as e:  # noqa: BLE001 - wandb's errors have many types
            if mode != "online":
                raise
            # The server was reachable a moment ago (train/wandb_check.py): the metrics
            # matter more than where they are shown.
            from l2a.errors import first_line

            print(f"warning: wandb: online init failed ({first_line(e)}); logging offline "
                  f"(upload later with wandb sync)", file=sys.stderr, flush=True)
            self._wandb = init("offline")

    def log(self, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {k: _plain(v) for k, v in metrics.items()}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        step = row.get("step", 0)
        if step % self.progress_every == 0 or step == self.total_steps:
            from train.run_log import append_to_run_log

            append_to_run_log(self.run_dir, progress_line(row, self.total_steps))
        if self._bar is not None:
            self._bar.update(1)
            post = {"loss": f"{row['loss']:.4f}" if isinstance(row["loss"], float) else row["loss"],
                    "sparsity": f"{row['sparsity']:.3f}"}
            if "tokens_per_s" in row:
                post["tok/s"] = f"{row['tokens_per_s']:.0f}"
            self._bar.set_postfix(post, refresh=False)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if isinstance(v, (int, float))},
                            step=row["step"])

    def write(self, text: str) -> None:
        """Print without breaking the bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self, plot: bool = True, summary: dict | None = None) -> Path | None:
        if not self.enabled:
            return None
        if self._bar is not None:
            self._bar.close()
        self._file.close()
        png = plot_layer_sparsity(self.run_dir) if plot else None
        self.loss_plot = plot_loss(self.run_dir) if plot else None
        if self._wandb is not None:
            if summary:
                self._wandb.summary.update({k: v for k, v in summary.items()
                                            if isinstance(v, (int, float, str))})
            self._wandb.finish()
        return png


def plot_layer_sparsity(run_dir: str | os.PathLike) -> Path | None:
    """PNG of every layer's sparsity (and the mean) over training; None without data."""
    rows = read_metrics(run_dir)
    layers = sorted({k for r in rows for k in r if k.startswith("sparsity/layer_")},
                    key=lambda k: int(k.rsplit("_", 1)[1]))
    if not rows or not layers:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    cmap = plt.get_cmap("viridis", max(len(layers), 2))
    for i, key in enumerate(layers):
        ax.plot(steps, [r.get(key, float("nan")) for r in rows], color=cmap(i), lw=1.2,
                label=f"layer {key.rsplit('_', 1)[1]}")
    ax.plot(steps, [r.get("sparsity", float("nan")) for r in rows], "k--", lw=2, label="mean")
    if any("target" in r for r in rows):
        ax.plot(steps, [r.get("target", float("nan")) for r in rows], "r:", lw=1.5, label="target")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("sparsity (fraction of tokens skipping global attention)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(layers) > 8 else 1, loc="best")
    fig.tight_layout()
    out = Path(run_dir) / PLOT_FILE
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_loss(run_dir: str | os.PathLike) -> Path | None:
    """PNG of the training loss (total and LM) over the optimizer steps, beside the
    sparsity plot; None without finite losses (a run that resumed at its last step)."""
    rows = [r for r in read_metrics(run_dir)
            if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(steps, [r["loss"] for r in rows], lw=1.5, label="loss (LM + sparsity term)")
    if any("lm_loss" in r for r in rows):
        ax.plot(steps, [r.get("lm_loss", float("nan")) for r in rows], lw=1.2, label="LM loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    out = Path(run_dir) / LOSS_PLOT_FILE
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
