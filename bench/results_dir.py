"""Where a benchmark writes its JSON when not given --out: the folder named by the environment
variable L2A_RESULTS_DIR where set (the results folder of a GPU job: scripts/gpu_bench.sh and
scripts/gpu_check.sh set it to theirs), else bench/results/ of the checkout."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "L2A_RESULTS_DIR"
ROOT = Path(__file__).resolve().parent.parent


def results_dir() -> Path:
    value = os.environ.get(ENV)
    return Path(value) if value else ROOT / "bench" / "results"
