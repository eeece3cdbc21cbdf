"""Helpers of the trainer tests: compose a run config, run the trainer in-process or as
a subprocess (`python -m train`, or torchrun), read metrics."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"

# Per the method: both attention branches, the router, RMSNorm_global and every norm train
# (tiny model: Qwen3-shaped, so QK-norms and no biases); MLPs, embeddings and the head do not.
METHOD_TRAINABLE = re.compile(
    r"model\.layers\.\d+\.("
    r"self_attn\.(local_attn|global_attn)\.(q_proj|k_proj|v_proj|o_proj|q_norm|k_norm)\.weight"
    r"|self_attn\.(router|global_norm)\.weight"
    r"|(input_layernorm|post_attention_layernorm)\.weight)"
    r"|model\.norm\.weight"
)
METHOD_FROZEN = re.compile(r"model\.embed_tokens\.weight|lm_head\.weight|model\.layers\.\d+\.mlp\..*")


def compose_run(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    import train.config  # noqa: F401  (resolver)
    from train.config import from_hydra

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return from_hydra(cfg)


def compose_entry(overrides: list[str]):
    """(RunConfig, evaluator factory) as `python -m train` builds them (its composition root)."""
    from hydra import compose, initialize_config_dir

    from train.__main__ import load_run_config

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return load_run_config(cfg)


def run_in_process(overrides: list[str], run_dir: Path, trainer_hook=None) -> tuple[int, object]:
    """Build a Trainer as `python -m train` does and fit it here; `trainer_hook(trainer)` may
    patch it first."""
    from train.trainer import Trainer

    run_cfg, make_evaluator = compose_entry(overrides)
    trainer = Trainer(run_cfg, run_dir, overrides, make_evaluator=make_evaluator)
    try:
        if trainer_hook is not None:
            trainer_hook(trainer)
        return trainer.fit(), trainer
    finally:
        trainer.close()


def run_cli(overrides: list[str], run_dir: Path, env: dict | None = None, timeout: int = 300,
            nproc: int = 1) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", **(env or {})}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(var, None)  # set in this process by in-process trainer tests
    if nproc == 1:
        cmd = [sys.executable, "-m", "train"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "train"]
    return subprocess.run(cmd + overrides + [f"hydra.run.dir={run_dir}"], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def torchrun_script(script: str, *args: str, nproc: int = 2, fault: str | None = None,
                    timeout: int = 900) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=<nproc> tests/train/<script> <args>` on CPU
    (gloo): one thread per process, wandb off, `L2A_FAULT=<fault>` when given."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                        "MASTER_PORT", "L2A_FAULT")}
    env = {**env, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if fault:
        env["L2A_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
         str(ROOT / "tests" / "train" / script), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_same_steps(run_a: Path, run_b: Path, loss_rel: float, grad_rel: float,
                      steps: int | None = None) -> None:
    """Two runs' metrics.jsonl: the same per-step loss and gradient norm (relative tolerance),
    and `steps` records each when given."""
    import pytest

    a, b = read_metrics(run_a), read_metrics(run_b)
    if steps is not None:
        assert len(a) == len(b) == steps
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=loss_rel)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=grad_rel)
