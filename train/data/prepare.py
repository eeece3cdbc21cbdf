"""``python -m train.data.prepare experiment=<name> [overrides]`` (``make data CONF=<name>``):
prepare the data of an experiment, exactly as the trainer will read it, and print its
statistics.

Composes ``conf/config.yaml`` (or ``--config-name NAME``) with the given overrides and
uses ``data.*``, the run's seed (``train.seed``, as the trainer does) and the tokenizer: ``data.tokenizer`` if set, else the model's
(``model.base``, a hub id or local directory; ``byte`` or a random-weight base
(``model.base: null``) means the offline byte-level tokenizer).
"""

from __future__ import annotations

import argparse
import os
import sys

from omegaconf import DictConfig, OmegaConf

from train.data.config import BYTE_TOKENIZER_NAME, DataConfig
from train.data.errors import ConfigError, DataError

CONF_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "conf"
)


def tokenizer_spec(cfg: DictConfig) -> str:
    """Where the tokenizer comes from: data.tokenizer, else the model's base."""
    data_tok = cfg.data.get("tokenizer")
    if data_tok:
        return data_tok
    model = cfg.get("model") or {}
    for key in ("tokenizer", "base"):
        value = model.get(key)
        if isinstance(value, str) and value:
            return value
    if model.get("random_base") is not None:
        return BYTE_TOKENIZER_NAME  # the random-weight tiny base uses the byte tokenizer
    raise ConfigError("data.tokenizer: not set, and the model config names no base model")


def run_seed(cfg: DictConfig) -> int:
    """The seed the trainer prepares with (``train.seed``; ``data.seed``, when set, wins
    inside ``prepare_data``), so that `make data` prepares exactly what training reads."""
    train = cfg.get("train") or {}
    seed = train.get("seed") if hasattr(train, "get") else None
    if seed is None:
        seed = cfg.get("seed", 0)
    return int(seed or 0)


def compose(config_name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="data"):
        return hydra_compose(config_name=config_name, overrides=overrides)


def run(cfg: DictConfig, force: bool = False):
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data_cfg = DataConfig.from_dict(data, path="data")
    spec = tokenizer_spec(cfg)
    # Heavy imports only once the config is known to be valid.
    from train.data.pipeline import prepare_data
    from train.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(spec)
    return prepare_data(data_cfg, tokenizer, data_cfg.prepared_dir, seed=run_seed(cfg), force=force)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.data.prepare",
        description="Prepare (tokenize, mix, pack) an experiment's data and print statistics.",
    )
    parser.add_argument("--config-name", "-cn", default="config")
    parser.add_argument("--force", action="store_true", help="prepare again even if up to date")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=tiny")
    args = parser.parse_intermixed_args(argv)  # flags may sit among the overrides
    from l2a.errors import WriteError
    from l2a.entry_errors import BAD_CONFIG, MACHINE_FAULT, hydra_error_line

    try:
        cfg = compose(args.config_name, args.overrides)
    except Exception as err:  # noqa: BLE001 - sorted by hydra_error_line, else re-raised
        report = hydra_error_line(err)
        if report is None:
            raise
        print(f"error: {report[0]}", file=sys.stderr)
        return report[1]
    try:
        run(cfg, force=args.force)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return BAD_CONFIG
    except WriteError as err:  # nothing half-written: the output is renamed into place
        print(f"error: {err}", file=sys.stderr)
        return MACHINE_FAULT
    return 0


if __name__ == "__main__":
    sys.exit(main())
