"""Run under torchrun by test_multiprocess.py: the same short run under ZeRO 1, 2 and 3
(ZeRO-3 with and without partitioned loading), one after the other in the same processes
(DeepSpeed's start-up is paid once). Each run dir gets `loading.json`.

    torchrun --nproc_per_node=2 tests/train/parity_worker.py <out root> <overrides...>
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from train_helpers import compose_run

from train.trainer import Trainer


def main() -> int:
    out_root, *overrides = sys.argv[1:]
    runs = {f"zero{s}": [f"deepspeed=zero{s}"] for s in (1, 2, 3)}
    runs["zero3_full_load"] = ["deepspeed=zero3", "deepspeed.zero3_init=false"]
    for name, extra in runs.items():
        run_overrides = overrides + extra
        trainer = Trainer(compose_run(run_overrides), f"{out_root}/{name}", run_overrides)
        if trainer.dist.rank == 0:
            Path(f"{out_root}/{name}").mkdir(parents=True, exist_ok=True)
            Path(f"{out_root}/{name}/loading.json").write_text(
                json.dumps({"loaded_partitioned": trainer.loaded_partitioned})
            )
        code = trainer.fit()
        trainer.close()
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
