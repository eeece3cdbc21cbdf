"""A Hydra app with the trainer's launcher contract (see fake_trainer.py), to test the sweep
launchers in seconds: `python -m tests.launch.fake_hydra_app -m l2a.sparsity_target=0.6,0.8
hydra/launcher=slurm hydra.searchpath=[file://<repo>/conf]`. Its summary.json has the
trainer's keys; "sparsity" is the target plus 0.01 and "final_lm_loss" falls with it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from tests.launch.fake_trainer import main as train_loop


@hydra.main(config_path="fake_app_conf", config_name="config", version_base="1.3")
def app(cfg) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    code = train_loop([f"run_dir={run_dir}", f"steps={cfg.steps}", f"step_s={cfg.step_s}",
                       f"save_s={cfg.save_s}", f"start_s={cfg.start_s}"])
    if code != 0:
        sys.exit(code)  # inside the task function, as train/__main__.py does
    summary_path = run_dir / "summary.json"
    if summary_path.exists():  # rank 0
        target = float(cfg.l2a.sparsity_target)
        summary = json.loads(summary_path.read_text())
        summary.update(experiment=cfg.name, overrides=list(HydraConfig.get().overrides.task),
                       final_lm_loss=2.0 + target, sparsity=target + 0.01,
                       sparsity_target=target, tokens_per_s=1000.0)
        summary_path.write_text(json.dumps(summary))


if __name__ == "__main__":
    app()
