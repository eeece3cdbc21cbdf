"""`python -m train`, reading rows prepared on another machine (one process, one GPU).

    python -m study.train_prepared <hydra overrides> hydra.run.dir=<run dir>

A GPU host without internet access may have torch, transformers, DeepSpeed and Hydra (the
wheels of scripts/offline_wheels.sh) but not the data pipeline's `datasets` / `pyarrow`;
`python -m study pack-data` packs the prepared rows on a machine that has them and
`python -m study --data-archives` unpacks them on the host. This entry
composes the same config as `python -m train`, opens `data.prepared_dir` as it is
(no fingerprint check: the sources are another machine's files) and gives the trainer the
same loader the trainer would build (`build_dataloader(prepared, micro_batch_size, rank 0,
world size 1, seed=train.seed)`), so a run reads the same batches either way.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    run_dirs = [a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")]
    overrides = [a for a in args if not a.startswith("hydra.")]
    from train.checkpoint import CheckpointError
    from train.config import ConfigError, from_hydra
    from train.data import DataError, PreparedData, build_dataloader
    from train.data.prepare import compose
    from train.trainer import NonFiniteError, Trainer

    try:
        if len(run_dirs) != 1:
            raise ConfigError("hydra.run.dir: give the run directory once")
        cfg = from_hydra(compose("config", overrides))
        prepared = PreparedData.load(cfg.data.prepared_dir, cfg.data.validation_sequences)
        if prepared.seq_len != cfg.data.seq_len:
            raise DataError(f"{cfg.data.prepared_dir}: rows of {prepared.seq_len} tokens, "
                            f"data.seq_len is {cfg.data.seq_len}")
        loader = build_dataloader(prepared, cfg.train.micro_batch_size, rank=0, world_size=1,
                                  seed=cfg.train.seed)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    trainer = None
    try:
        trainer = Trainer(cfg, run_dirs[0], overrides, loader=loader)
        return trainer.fit()
    except (ConfigError, CheckpointError, NonFiniteError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2 if isinstance(e, ConfigError) else 1
    finally:
        if trainer is not None:
            trainer.close()


if __name__ == "__main__":
    raise SystemExit(main())
