"""Run under torchrun by tests: compose a run config from overrides and fit it.

    torchrun --nproc_per_node=2 tests/train/fit_worker.py <run dir> <overrides...>
"""

from __future__ import annotations

import sys

from train_helpers import compose_run

from train.trainer import Trainer


def main() -> int:
    run_dir, *overrides = sys.argv[1:]
    trainer = Trainer(compose_run(overrides), run_dir, overrides)
    code = trainer.fit()
    trainer.close()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
