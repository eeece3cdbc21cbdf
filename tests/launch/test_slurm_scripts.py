"""The sbatch scripts on a real one-node Slurm, with a stand-in trainer that keeps the
trainer's contract (tests/launch/fake_trainer.py), so each job takes seconds: rank
environment per launcher, checkpoint-and-requeue on the pre-timeout signal, no requeue
after scancel. The real trainer goes through the same scripts in test_slurm_training.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
SINGLE = str(REPO / "launch" / "slurm_single_node.sbatch")
MULTI = str(REPO / "launch" / "slurm_multi_node.sbatch")
CPU_JOB = ["--gpus-per-node=0"]  # the scripts ask for 8 GPUs per node; the test node has none


def _submit(cluster, tmp_path, script, *overrides, launcher="torchrun", nproc=2, extra=()):
    env = {"L2A_MODULE": "tests.launch.fake_trainer", "L2A_LAUNCHER": launcher,
           "L2A_NPROC_PER_NODE": str(nproc)}
    log = tmp_path / "job-%j.out"
    job = cluster.sbatch(*CPU_JOB, *extra, f"--output={log}", script, *overrides, env=env, cwd=REPO)
    return job, Path(str(log).replace("%j", job))


def _wait_for_steps(run_dir: Path, n: int, timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    metrics = run_dir / "metrics.jsonl"
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
            return
        time.sleep(0.2)
    raise AssertionError(f"{metrics} did not reach {n} steps in {timeout_s} s")


def _ranks(run_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (run_dir / "ranks").glob("*.json")}


def _steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("launcher", ["srun", "torchrun", "deepspeed"])
def test_single_node_script_starts_one_process_per_slot(slurm_cluster, tmp_path, launcher):
    run_dir = tmp_path / "run"
    job, log = _submit(slurm_cluster, tmp_path, SINGLE, f"run_dir={run_dir}", "steps=3",
                       "step_s=0.05", launcher=launcher)
    assert slurm_cluster.wait(job, 120) == "COMPLETED", log.read_text()
    ranks = _ranks(run_dir)
    assert sorted(ranks) == ["0-0", "0-1"], log.read_text()
    assert {r["RANK"] for r in ranks.values()} == {"0", "1"}
    assert {r["LOCAL_RANK"] for r in ranks.values()} == {"0", "1"}
    assert all(r["WORLD_SIZE"] == "2" for r in ranks.values())
    if launcher != "deepspeed":  # the DeepSpeed launcher names it LOCAL_SIZE
        assert all(r["LOCAL_WORLD_SIZE"] == "2" for r in ranks.values())
    assert all(r["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1" for r in ranks.values())
    # The test node has 2 CPUs: one thread per process.
    assert all(r["OMP_NUM_THREADS"] == "1" for r in ranks.values())
    if launcher != "torchrun":  # torchrun --standalone picks its own rendezvous port
        assert all(r["MASTER_PORT"] == str(29500 + int(job) % 20000) for r in ranks.values())
    text = log.read_text()
    assert f"via {launcher}" in text and "job step finished" in text
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 3


def test_multi_node_script_rendezvous_from_slurm(slurm_cluster, tmp_path):
    """The many-node script on the one node we have, with torchrun's c10d rendezvous at the
    first node of the allocation (the path every multi-node job takes)."""
    run_dir = tmp_path / "run"
    env_extra = ["--nodes=1", "--export=ALL,L2A_RDZV=c10d"]
    job, log = _submit(slurm_cluster, tmp_path, MULTI, f"run_dir={run_dir}", "steps=2",
                       "step_s=0.05", extra=env_extra)
    assert slurm_cluster.wait(job, 120) == "COMPLETED", log.read_text()
    ranks = _ranks(run_dir)
    assert sorted(r["RANK"] for r in ranks.values()) == ["0", "1"], log.read_text()
    assert f"rendezvous {slurm_cluster.node}:{29500 + int(job) % 20000}" in log.read_text()


def _wait_for_ranks(run_dir: Path, n: int, timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if len(list((run_dir / "ranks").glob("0-*.json"))) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"{n} ranks did not start in {timeout_s} s")


def test_pre_timeout_signal_checkpoints_requeues_and_resumes(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    # start_s: the ranks have no handler for 2 s ("loading the model"); the batch shell
    # repeats the request (every L2A_RESIGNAL_S) until they take it. wait_signal_at: a rank
    # does not go past step 3 of its first start without the signal, so however slow the
    # node, the signal is taken at step 1, 2 or 3 and the job is requeued.
    job, log = _submit(slurm_cluster, tmp_path, SINGLE, f"run_dir={run_dir}", "steps=30",
                       "step_s=0.2", "save_s=1", "start_s=2", "wait_signal_at=3",
                       extra=["--export=ALL,L2A_RESIGNAL_S=1"])
    _wait_for_ranks(run_dir, 2)
    # What `--signal=B:USR1@600` does 10 minutes before the time limit.
    slurm_cluster.run("scancel", "--signal=USR1", "--batch", job)
    assert slurm_cluster.wait(job, 180) == "COMPLETED", log.read_text()
    text = log.read_text()
    assert slurm_cluster.restarts(job) == 1, text
    assert "requeueing job" in text
    ranks = _ranks(run_dir)
    assert sorted(ranks) == ["0-0", "0-1", "1-0", "1-1"], text  # both ranks, both starts
    assert ranks["1-0"]["SLURM_RESTART_COUNT"] == "1"
    # Every step exactly once: the second start resumed where the checkpoint left off.
    steps = _steps(run_dir)
    assert steps == list(range(1, 31)), steps
    saved = json.loads((run_dir / "checkpoint.json").read_text())["step"]
    assert 1 <= saved <= 3, saved
    assert "signal 10, saved step" in text


def test_scancel_is_not_requeued(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    # wait_signal_at: the run cannot end before scancel's SIGTERM reaches it.
    job, log = _submit(slurm_cluster, tmp_path, SINGLE, f"run_dir={run_dir}", "steps=200",
                       "step_s=0.2", "save_s=1", "wait_signal_at=2", launcher="srun", nproc=1)
    _wait_for_steps(run_dir, 2)
    slurm_cluster.run("scancel", job)
    assert slurm_cluster.wait(job, 120) == "CANCELLED"
    text = log.read_text()
    assert "not requeueing" in text, text
    assert slurm_cluster.restarts(job) == 0
    assert not (run_dir / "summary.json").exists()
