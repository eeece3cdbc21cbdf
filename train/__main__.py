"""`python -m train [overrides]`: the Hydra entry point (see conf/config.yaml).

    python -m train experiment=tiny l2a.sparsity_target=0.5
    torchrun --nproc_per_node=8 -m train experiment=qwen3_128k
    python -m train -m experiment=tiny l2a.sparsity_target=0.5,0.8   # a sweep
"""

from __future__ import annotations

import os
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


INTERRUPTED = 130  # 128 + SIGINT, the shell's convention for Ctrl-C


def _refuse_a_run_dir_in_use(argv: list[str]) -> None:
    """`hydra.run.dir=<a directory a live run holds>`: refused before Hydra writes its
    `.hydra/` files (and this process its log) into the other run's directory. The trainer
    takes the lock itself (train/run_dir.py); this only keeps the refused launch out."""
    if int(os.environ.get("RANK", "0")) != 0 or "-m" in argv or "--multirun" in argv:
        return
    dirs = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")]
    if not dirs:
        return  # a fresh time-stamped directory
    from train.run_dir import in_use_by_another_run

    refusal = in_use_by_another_run(dirs[-1])
    if refusal is not None:
        print(f"error: {refusal}", file=sys.stderr, flush=True)
        sys.exit(2)


def _run_job(cfg, run_dir: Path, overrides: list[str], errors: list[str]) -> int:
    """One job: validate, train; the exit code (errors: their one-line reasons)."""
    from train.config import ConfigError

    try:
        run_cfg, make_evaluator = load_run_config(cfg, overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        errors.append(str(e))
        return 2
    from train.trainer import run

    return run(run_cfg, run_dir, overrides, errors=errors, make_evaluator=make_evaluator)


def load_run_config(cfg, overrides: list[str] | None = None):
    """(validated RunConfig, the evaluator factory or None): the composition root wires the
    evaluation into the trainer, so that train/ never imports eval/. A bad `train.eval`
    fails here, before anything is built."""
    from train.config import from_hydra

    run_cfg = from_hydra(cfg, overrides)
    if not run_cfg.train.eval_every:
        return run_cfg, None
    from eval.training import build_training_eval, check_training_eval

    check_training_eval(run_cfg.train)
    return run_cfg, build_training_eval


def main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    import train.config  # noqa: F401  (registers the l2a_timestamp resolver)
    from launch.sweep_failures import SweepFailures
    from train.library_output import set_library_output, verbose_on_command_line
    from train.run_log import discard_empty_run_dir

    set_library_output(verbose_on_command_line())  # before DeepSpeed's import-time warning
    failures = SweepFailures()
    _refuse_a_run_dir_in_use(sys.argv[1:])
    sweep_dirs: set[str] = set()  # the in-process sweep's, summarized at its end
    _agree_on_timestamp()

    @hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
    def app(cfg) -> None:
        hc = HydraConfig.get()
        run_dir = Path(hc.runtime.output_dir)
        overrides = list(hc.overrides.task)
        # Hydra's own launcher runs a sweep's jobs in this process: a failed job is
        # reported at the end, and the next one runs. Every other launcher (local, Slurm)
        # gives each job its own process, whose exit code is the job's.
        in_process_sweep = (hc.mode == RunMode.MULTIRUN
                            and str(hc.launcher.get("_target_", "")).endswith("BasicLauncher"))
        errors: list[str] = []
        try:
            code = _run_job(cfg, run_dir, overrides, errors)
        except KeyboardInterrupt:
            print(f"error: interrupted (Ctrl-C); complete checkpoints, if any, are in "
                  f"{run_dir / 'checkpoints'}", file=sys.stderr, flush=True)
            errors.append("interrupted")
            code = INTERRUPTED
        except BaseException:
            discard_empty_run_dir(run_dir)
            raise
        if code != 0:
            discard_empty_run_dir(run_dir)
        if in_process_sweep:
            sweep_dirs.add(str(hc.sweep.dir))
            failures.jobs += 1
            if code != 0:
                failures.add(int(hc.job.num), overrides, code,
                             errors[-1] if errors else f"exited with {code}")
            if code != INTERRUPTED:
                return
        if code != 0:  # 0 returns, so that a sweep's next job runs in this process
            sys.exit(code)

    from l2a.entry_errors import run_hydra_app

    run_hydra_app(app)
    if sweep_dirs:
        from launch.summarize import print_sweep_summary

        for sweep_dir in sorted(sweep_dirs):
            print_sweep_summary(sweep_dir)
    code = failures.report()
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
