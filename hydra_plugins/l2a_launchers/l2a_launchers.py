"""`hydra/launcher=slurm` and `hydra/launcher=local` (conf/hydra/launcher/*.yaml)."""

from __future__ import annotations

from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as _SubmititSlurmLauncher,
)

from launch.local_launcher import LocalLauncher as _LocalLauncher


class SlurmLauncher(_SubmititSlurmLauncher):
    """hydra-submitit's Slurm launcher, one task per GPU, with the trainer's preemption
    contract: submitit's pre-timeout signal makes the trainer checkpoint, then the job is
    requeued (launch/submitit_job.py)."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        from launch.submitit_job import sbatch_setup_lines

        p = self.params
        if not p.get("tasks_per_node"):  # 0/None: one process per GPU
            p["tasks_per_node"] = p.get("gpus_per_node") or 1
        p["setup"] = sbatch_setup_lines() + list(p.get("setup") or [])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from launch.submitit_job import run_preemptible

        # No super(): Hydra's plugin scan executes this module twice, so cloudpickle ships
        # this class by value and the name SlurmLauncher may not be type(self) in the job.
        return run_preemptible(lambda: _SubmititSlurmLauncher.__call__(self, *args, **kwargs))


class LocalLauncher(_LocalLauncher):
    __doc__ = _LocalLauncher.__doc__
