"""hydra/launcher=slurm (hydra-submitit + launch/submitit_job.py) on a real one-node Slurm,
with a Hydra app that keeps the trainer's contract (fake_hydra_app.py): a sweep becomes
one job per point, tasks get torch.distributed's variables, and submitit's pre-timeout
signal makes the job checkpoint, requeue and resume. The real trainer: test_slurm_training.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.summarize import summarize

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]

# The test node: no GPUs, 2 CPUs; values a cluster would take from conf/local/default.yaml.
CLUSTER_OVERRIDES = [
    "hydra/launcher=slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.timeout_min=30",
]


def sweep_command(module: str, sweep_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", module, "-m", *CLUSTER_OVERRIDES,
            f"hydra.sweep.dir={sweep_dir}", *overrides]


def _fake_sweep(sweep_dir: Path, *overrides: str) -> list[str]:
    return sweep_command("tests.launch.fake_hydra_app", sweep_dir,
                         f"hydra.searchpath=[file://{REPO}/conf]", *overrides)


def _ranks(run_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (run_dir / "ranks").glob("*.json")}


# submitit's job folders are named by Slurm job id ("123", or "123_0" for an array task);
# the same folder also holds its pickles ("<uuid>.pkl"), which may start with a digit.
_JOB_FOLDER = re.compile(r"\d+(_\d+)?")


def _job_folders(sweep_dir: Path) -> list[str]:
    root = sweep_dir / ".submitit"
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _JOB_FOLDER.fullmatch(p.name))


def _submitit_logs(sweep_dir: Path) -> str:
    return "\n".join(f"==> {p} <==\n{p.read_text()}" for p in sorted(sweep_dir.glob(".submitit/*/*.out"))
                     + sorted(sweep_dir.glob(".submitit/*/*.err")))


def test_sweep_submits_one_job_per_point(slurm_cluster, tmp_path):
    sweep_dir = tmp_path / "sweep"
    out = subprocess.run(_fake_sweep(sweep_dir, "l2a.sparsity_target=0.6,0.8", "steps=3",
                                     "step_s=0.05"),
                         cwd=REPO, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr + _submitit_logs(sweep_dir)
    tasks = [name for name in _job_folders(sweep_dir) if "_" in name]
    assert len(tasks) == 2 and tasks[0].endswith("_0") and tasks[1].endswith("_1")  # one array
    for num, target in (("0", 0.6), ("1", 0.8)):
        run = sweep_dir / num
        summary = json.loads((run / "summary.json").read_text())
        assert summary["steps"] == 3 and summary["sparsity_target"] == target
        assert f"l2a.sparsity_target={target}" in summary["overrides"]
        (rank,) = _ranks(run).values()
        assert rank["RANK"] == "0" and rank["WORLD_SIZE"] == "1" and rank["MASTER_PORT"]
        assert rank["OMP_NUM_THREADS"] == "1" and rank["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    paths = summarize(sweep_dir)
    csv_lines = paths["csv"].read_text().splitlines()
    assert csv_lines[0].startswith("l2a.sparsity_target,final_loss")
    assert [line.split(",")[0] for line in csv_lines[1:]] == ["0.6", "0.8"]


def _job_id(sweep_dir: Path, timeout_s: float = 60) -> str:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        jobs = _job_folders(sweep_dir)
        if jobs:
            return jobs[0]
        time.sleep(0.2)
    raise AssertionError("no submitit job folder appeared")


def _wait_for_ranks(run_dir: Path, n: int, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if len(list((run_dir / "ranks").glob("0-*.json"))) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"sweep exited with {proc.returncode} before {n} ranks started")
        time.sleep(0.1)
    raise AssertionError(f"{n} ranks did not start in {timeout_s} s")


def test_pre_timeout_signal_checkpoints_and_requeues_through_submitit(slurm_cluster, tmp_path):
    sweep_dir = tmp_path / "sweep"
    log = open(tmp_path / "sweep.log", "w")
    proc = subprocess.Popen(
        _fake_sweep(sweep_dir, "hydra.launcher.tasks_per_node=2", "steps=30", "step_s=0.2",
                    "save_s=1", "start_s=2"),
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    try:
        job = _job_id(sweep_dir)
        run = sweep_dir / "0"
        # Signal while the tasks are "loading" (start_s: no trainer handler yet): the
        # request must wait for the trainer, not kill it or get lost.
        _wait_for_ranks(run, 2, proc)
        # What Slurm does signal_delay_s before the time limit (submitit's --signal=USR2@...).
        slurm_cluster.run("scancel", "--signal=USR2", job)
        assert proc.wait(timeout=240) == 0, (tmp_path / "sweep.log").read_text() + _submitit_logs(sweep_dir)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    logs = _submitit_logs(sweep_dir)
    assert slurm_cluster.restarts(job) == 1, logs
    assert "requeueing job" in logs
    ranks = _ranks(run)
    assert sorted(ranks) == ["0-0", "0-1", "1-0", "1-1"], logs
    assert {r["WORLD_SIZE"] for r in ranks.values()} == {"2"}
    assert {ranks["0-0"]["RANK"], ranks["0-1"]["RANK"]} == {"0", "1"}
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31)), steps
    assert json.loads((run / "summary.json").read_text())["steps"] == 30
