"""PNGs of the results: NIAH depth x length heatmaps, loss against position, sparsity per
layer. Matplotlib (Agg), as train/metrics.py."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def niah_heatmap(results: dict, out: Path) -> Path | None:
    cells = [c for c in results.get("tasks", []) if c["task"].startswith("niah") and c["depth"] not in (None, "all")]
    if not cells:
        return None
    plt = _plt()
    tasks = list(dict.fromkeys(c["task"] for c in cells))
    lengths = sorted({c["length"] for c in cells})
    depths = sorted({c["depth"] for c in cells})
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks) + 1, 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        grid = [[float("nan")] * len(lengths) for _ in depths]
        for c in cells:
            if c["task"] == task:
                grid[depths.index(c["depth"])][lengths.index(c["length"])] = 100 * c["score"]
        im = ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(lengths)), [f"{n // 1024}K" if n >= 1024 else str(n) for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
        ax.set_xlabel("context length (tokens)")
        ax.set_title(task, fontsize=9)
    axes[0][0].set_ylabel("needle depth")
    fig.colorbar(im, ax=axes[0].tolist(), label="score (%)")
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def perplexity_by_position(results: dict, out: Path) -> Path | None:
    buckets = results.get("perplexity_by_position", [])
    if not buckets:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for length in sorted({b["length"] for b in buckets}):
        pts = [((b["start"] + b["end"]) / 2, b["loss"]) for b in buckets
               if b["length"] == length and b["loss"] is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"length {length}")
    ax.set_xlabel("position in the document (bucket centre, tokens)")
    ax.set_ylabel("loss (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def sparsity_per_layer(results: dict, out: Path) -> Path | None:
    routing = results.get("routing", {})
    held, tasks = routing.get("heldout", []), routing.get("tasks", [])
    if not held and not tasks:
        return None
    plt = _plt()
    layers = routing.get("layers")
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in held:
        ax.plot(layers or range(len(r["layer_sparsity"])), r["layer_sparsity"], marker="o",
                label=f"held-out, length {r['length']}")
    for r in tasks:
        ax.plot(layers or range(len(r["layer_sparsity"])), r["layer_sparsity"], ls="--", lw=1,
                label=f"{r['task']} {r['length']}")
    ax.set_xlabel("decoder layer (with a global branch)")
    ax.set_ylabel("sparsity (fraction of tokens skipping global attention)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_plots(results: dict, run_dir: Path) -> list[str]:
    run_dir = Path(run_dir)
    made = [niah_heatmap(results, run_dir / "niah_heatmap.png"),
            perplexity_by_position(results, run_dir / "perplexity_by_position.png"),
            sparsity_per_layer(results, run_dir / "sparsity_per_layer.png")]
    return [str(p) for p in made if p is not None]
