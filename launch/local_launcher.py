"""`hydra/launcher=local`: run the jobs of a sweep one after another on this machine, each in
a fresh process (`python -m train`, or `torchrun --standalone` with one process per GPU).

Hydra's default launcher runs every job inside the multirun process, which cannot use
several GPUs and keeps one job's memory around for the next. Here each job is a separate
command with `hydra.run.dir` set to its sweep subdirectory, so it is exactly the run the
user would have started by hand, and `python -m launch.summarize <sweep dir>` reads it
like a Slurm sweep. SIGTERM/SIGUSR1 sent to the launcher are passed to the running job
(which checkpoints and exits 75) and stop the sweep; rerunning the same command with
`hydra.sweep.dir=<that dir>` resumes every job from its checkpoint.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, open_dict

from launch.sweep_failures import SweepFailures

log = logging.getLogger(__name__)

# Hydra overrides of the sweep itself; the job command gets the others (hydra.verbose, ...).
_SWEEP_ONLY = ("hydra/launcher", "hydra.launcher", "hydra/sweeper", "hydra.sweeper",
               "hydra.sweep", "hydra.mode", "hydra.run.dir", "hydra.job.num", "hydra.job.id")


def local_gpu_count() -> int:
    """GPUs this process may use, without importing torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines())


def _pass_through(stream, out) -> str | None:
    """Copy a job's stderr to ours as it comes (progress bars too); return its last
    `error: ...` line (the one-line reason `python -m train` gives), without the prefix."""
    last, pending = None, b""
    fd = stream.fileno()
    while chunk := os.read(fd, 65536):
        out.buffer.write(chunk) if hasattr(out, "buffer") else out.write(chunk.decode(errors="replace"))
        out.flush()
        *lines, pending = (pending + chunk).split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace").strip()
            if line.startswith("error: "):
                last = line[len("error: "):]
    stream.close()
    return last


class LocalLauncher(Launcher):
    """Sequential sweep on this machine, one subprocess (or torchrun) per job."""

    def __init__(self, nproc_per_node: int | str = "auto", module: str | None = None,
                 python: str | None = None, **_: Any) -> None:
        if nproc_per_node != "auto" and (not str(nproc_per_node).isdigit() or int(nproc_per_node) < 1):
            raise ValueError(f"hydra.launcher.nproc_per_node: must be 'auto' or >= 1, got {nproc_per_node!r}")
        self.nproc_per_node = nproc_per_node
        self.module = module
        self.python = python or sys.executable
        self.config: DictConfig | None = None
        self.hydra_context: Any = None
        self._child: subprocess.Popen | None = None
        self._interrupted: int | None = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context

    def nproc(self) -> int:
        if self.nproc_per_node == "auto":
            return max(1, local_gpu_count())
        return int(self.nproc_per_node)

    def program(self) -> list[str]:
        """`-m <module>`, or the script: by default the program that started the sweep."""
        if self.module:
            return ["-m", self.module]
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if spec is not None and spec.name:
            return ["-m", spec.name.removesuffix(".__main__")]
        return [os.path.abspath(sys.argv[0])]

    def command(self, overrides: Sequence[str]) -> list[str]:
        n = self.nproc()
        if n == 1:
            return [self.python, *self.program(), *overrides]
        return [self.python, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={n}", "--max-restarts=0", *self.program(), *overrides]

    def _forward(self, signum: int, _frame: Any) -> None:
        self._interrupted = signum
        if self._child is not None and self._child.poll() is None:
            self._child.send_signal(signum)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        setup_globals()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        hydra_overrides = [o for o in self.config.hydra.overrides.hydra
                           if not o.lstrip("+~").startswith(_SWEEP_ONLY)]
        log.info(f"Local sweep of {len(job_overrides)} job(s), {self.nproc()} process(es) each, "
                 f"in {sweep_dir}")
        old = {s: signal.signal(s, self._forward) for s in (signal.SIGTERM, signal.SIGUSR1)}
        returns: list[JobReturn] = []
        failures = SweepFailures(jobs=len(job_overrides))
        try:
            for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
                ret = self._run_one(idx, list(overrides), hydra_overrides)
                returns.append(ret)
                if ret.status == JobStatus.FAILED:
                    failures.add(idx, list(overrides), getattr(ret, "exit_code", 1),
                                 str(ret._return_value).split(": ", 1)[-1])
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        if not self._interrupted:
            from launch.summarize import print_sweep_summary

            print_sweep_summary(sweep_dir)
        if failures.failed:
            # Every job has run: one line per failed one and a non-zero exit, instead of
            # Hydra's traceback of the first failure only.
            raise SystemExit(failures.report())
        return returns

    def _run_one(self, idx: int, overrides: list[str], hydra_overrides: list[str]) -> JobReturn:
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config.hydra.job) as job:
            job.id = f"local_{idx}"
            job.num = idx
        run_dir = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
        ret = JobReturn(overrides=overrides, hydra_cfg=sweep_config, working_dir=str(run_dir),
                        task_name=str(sweep_config.hydra.job.name))
        if self._interrupted is not None:
            ret.status = JobStatus.FAILED
            ret.exit_code = 128 + self._interrupted
            ret.return_value = RuntimeError(f"job #{idx}: not started: the sweep was interrupted")
            return ret
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))} -> {run_dir}")
        cmd = self.command([*overrides, *hydra_overrides, f"hydra.run.dir={run_dir}"])
        self._child = subprocess.Popen(cmd, stderr=subprocess.PIPE)
        try:
            error_line = _pass_through(self._child.stderr, sys.stderr)
            code = self._child.wait()
        finally:
            self._child = None
        if code == 0:
            ret.status = JobStatus.COMPLETED
            ret.return_value = None
        else:
            ret.status = JobStatus.FAILED
            ret.exit_code = code if code > 0 else 1  # killed by a signal: negative
            why = f"{error_line}; " if error_line else ""
            ret.return_value = RuntimeError(f"job #{idx} ({' '.join(overrides)}): {why}exited with "
                                            f"{code}; run dir {run_dir}")
        return ret
