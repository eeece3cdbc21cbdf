"""Shared fixtures of the trainer tests: one model cache and one prepared data set per
session, so the tiny base is built, converted and its data prepared once."""

from __future__ import annotations

import pytest

# A short tiny run: a few optimizer steps, checkpoints every 3.
FAST = [
    "experiment=tiny",
    "train.max_steps=6",
    "train.ckpt_every=3",
    "train.progress_bar=false",
    "train.wandb.mode=disabled",
    "train.plot=false",
    "train.export=false",
]


@pytest.fixture(scope="session")
def shared_dirs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("train-shared")
    return {"model.cache_dir": str(root / "models"), "data.prepared_dir": str(root / "data")}


@pytest.fixture(scope="session")
def base_overrides(shared_dirs) -> list[str]:
    return FAST + [f"{k}={v}" for k, v in shared_dirs.items()]
