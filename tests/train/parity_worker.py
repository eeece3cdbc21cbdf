"""Run under torchrun by test_multiprocess.py: the same short run under ZeRO 1, 2 and 3,
one after the other in the same processes (DeepSpeed's start-up is paid once).

    torchrun --nproc_per_node=2 tests/train/parity_worker.py <out root> <overrides...>
"""

from __future__ import annotations

import sys

from train_helpers import compose_run

from train.trainer import Trainer


def main() -> int:
    out_root, *overrides = sys.argv[1:]
    for stage in (1, 2, 3):
        run_overrides = overrides + [f"deepspeed=zero{stage}"]
        trainer = Trainer(compose_run(run_overrides), f"{out_root}/zero{stage}", run_overrides)
        code = trainer.fit()
        trainer.close()
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
