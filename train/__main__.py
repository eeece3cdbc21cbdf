"""`python -m train [overrides]`: the Hydra entry point (see conf/config.yaml).

    python -m train experiment=tiny l2a.sparsity_target=0.5
    torchrun --nproc_per_node=8 -m train experiment=qwen3_128k
    python -m train -m experiment=tiny l2a.sparsity_target=0.5,0.8   # a sweep
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _agree_on_timestamp() -> None:
    """Under torchrun every rank composes the config; they must name the same run dir."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or os.environ.get("L2A_RUN_TIMESTAMP"):
        return
    from train.config import _timestamp
    from train.distributed import broadcast_object, init_distributed

    init_distributed()
    os.environ["L2A_RUN_TIMESTAMP"] = broadcast_object(_timestamp())


def _discard_empty_run_dir(run_dir: Path) -> None:
    """A config error leaves nothing behind: drop the dir Hydra made if it holds only its
    own files."""
    if run_dir.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)


def main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    import train.config  # noqa: F401  (registers the l2a_timestamp resolver)

    _agree_on_timestamp()

    @hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
    def app(cfg) -> None:
        from train.config import ConfigError, from_hydra

        hc = HydraConfig.get()
        run_dir = Path(hc.runtime.output_dir)
        overrides = list(hc.overrides.task)
        try:
            run_cfg = from_hydra(cfg)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            _discard_empty_run_dir(run_dir)
            sys.exit(2)
        from train.trainer import run

        code = run(run_cfg, run_dir, overrides)
        if code == 2:
            _discard_empty_run_dir(run_dir)
        if code != 0:  # 0 returns, so that a sweep's next job runs in this process
            sys.exit(code)

    app()


if __name__ == "__main__":
    main()
