"""Saving the study's figures (matplotlib, imported on first use)."""

from __future__ import annotations

from pathlib import Path


def save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
