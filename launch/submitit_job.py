"""The job side of the Slurm (submitit) sweep launcher: what runs inside each Slurm task
before and after the Hydra job (`python -m train`'s task function).

Inside a submitit job there is no torchrun: Slurm starts one task per GPU and each runs
the pickled launcher, which calls the task function in-process. So here we

- export the torch.distributed variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
  MASTER_PORT) from the Slurm ones, as torchrun would;
- turn submitit's pre-timeout signal (USR2, `signal_delay_s` before the limit) into the
  trainer's own preemption request: the trainer's SIGUSR1 handler runs, the step in
  flight finishes, a checkpoint is written and the task function exits with 75;
- then requeue through submitit (rank 0 only): its checkpoint()/DelayedSubmission
  machinery, its count of timeouts (`max_num_timeout`) and its `scontrol requeue`. The
  requeued job calls the same launcher with the same arguments, i.e. the same run
  directory, and the trainer resumes from it (`train.resume=auto`).

submitit's own handler would requeue and exit on the spot, from inside the signal
handler, before the trainer could save anything; that is why it is replaced.
A plain SIGTERM (scancel, Slurm's own preemption, the hard time limit) still makes the
trainer checkpoint and exit 75, but is not requeued from here: Slurm requeues preempted
jobs itself when the partition says so, and a cancelled job must stay cancelled.
"""

from __future__ import annotations

import os
import random
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REQUEUE_EXIT_CODE = 75


def export_distributed_env(env: Any) -> None:
    """torchrun-style variables from a submitit JobEnvironment (existing ones are kept)."""
    port = os.environ.get("MASTER_PORT") or str(random.Random(env.job_id).randint(20000, 59999))
    values = {
        "MASTER_ADDR": env.hostnames[0],
        "MASTER_PORT": port,
        "RANK": str(env.global_rank),
        "WORLD_SIZE": str(env.num_tasks),
        "LOCAL_RANK": str(env.local_rank),
        "LOCAL_WORLD_SIZE": str(max(1, env.num_tasks // max(1, env.num_nodes))),
    }
    for key, value in values.items():
        os.environ.setdefault(key, value)


class PreemptionBridge:
    """Routes submitit's pre-timeout signal to the trainer's SIGUSR1 handler."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.received = False

    def install(self) -> PreemptionBridge:
        signal.signal(self.signum, self._on_signal)
        return self

    def _on_signal(self, signum: int, frame: Any) -> None:
        print(f"[l2a-submitit] got {signal.Signals(signum).name} before the time limit: "
              "asking the trainer to checkpoint and exit", file=sys.stderr, flush=True)
        first = not self.received
        self.received = True
        handler = signal.getsignal(signal.SIGUSR1)
        if callable(handler):
            handler(signal.SIGUSR1, frame)
        elif first:
            # The trainer is still loading and has no handler yet: ask it once it has one.
            threading.Thread(target=self._deliver_when_ready, daemon=True).start()

    @staticmethod
    def _deliver_when_ready(poll_s: float = 1.0) -> None:
        while not callable(signal.getsignal(signal.SIGUSR1)):
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGUSR1)


def run_preemptible(job: Callable[[], Any]) -> Any:
    """Run `job` (the Hydra task) with the bridge installed; requeue after a checkpoint."""
    import submitit
    from submitit.core.job_environment import SignalHandler
    from submitit.core.utils import DelayedSubmission

    env = submitit.JobEnvironment()
    export_distributed_env(env)
    paths = env.paths
    # Built now so that its timeout arithmetic measures from the start of this run.
    handler = SignalHandler(env, paths, DelayedSubmission.load(paths.submitted_pickle))
    bridge = PreemptionBridge(env._usr_sig()).install()
    try:
        return job()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        if bridge.received and code != 0:
            if env.global_rank == 0:
                print(f"[l2a-submitit] trainer exited with {code} after the checkpoint request: "
                      f"requeueing job {env.job_id}", file=sys.stderr, flush=True)
            # Rank 0: checkpoint() + scontrol requeue + exit; it raises UncompletedJobError
            # (recorded as the job's result) when max_num_timeout is used up. Other ranks
            # return and exit with the trainer's code.
            handler.checkpoint_and_try_requeue(bridge.signum)
        raise


def sbatch_setup_lines() -> list[str]:
    """Shell lines for the generated sbatch script, before its `srun`: the same
    environment as the sbatch scripts, and one thread pool per task's CPUs."""
    env_file = Path(__file__).resolve().parent / "env_defaults.sh"
    return [
        f"source {shlex.quote(str(env_file))}",
        "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}",
    ]
