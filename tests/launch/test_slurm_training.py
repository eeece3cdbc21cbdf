"""The real trainer (`python -m train experiment=tiny`, a few steps on CPU) on a real
one-node Slurm: (a) the sbatch script, (b) a 2-point sparsity sweep through the submitit
launcher, summarized, (c) the pre-timeout signal mid-run: checkpoint, requeue, resume, and
the same losses as the uninterrupted run of (a)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from launch.summarize import summarize
from tests.launch.test_slurm_sweep import sweep_command

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
SINGLE = str(REPO / "launch" / "slurm_single_node.sbatch")
STEPS = 8
# Small and quick; no periodic checkpoints, so a resumed run can only have come from the
# checkpoint written on the signal.
TINY = [
    "experiment=tiny", "~local", f"train.max_steps={STEPS}", "train.micro_batch_size=2",
    "train.ckpt_every=0", "train.export=false", "train.plot=false", "train.progress_bar=false",
    "train.wandb.mode=disabled",
]
ENV = {"L2A_LAUNCHER": "torchrun", "L2A_NPROC_PER_NODE": "1", "WANDB_MODE": "disabled"}


def _losses(run_dir: Path) -> dict[int, float]:
    """step -> loss; the last line of a step wins (a resumed run may repeat one)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "step" in row and "loss" in row:
            out[int(row["step"])] = float(row["loss"])
    return out


def _sbatch(cluster, tmp_path: Path, name: str, *overrides: str,
            env: dict | None = None) -> tuple[str, Path]:
    log = tmp_path / f"{name}-%j.out"
    job = cluster.sbatch("--gpus-per-node=0", f"--output={log}", SINGLE, *TINY, *overrides,
                         env={**ENV, **(env or {})}, cwd=REPO)
    return job, Path(str(log).replace("%j", job))


@pytest.fixture(scope="module")
def reference_run(slurm_cluster, tmp_path_factory):
    """(a) One uninterrupted sbatch run; also the reference losses for (c)."""
    tmp = tmp_path_factory.mktemp("reference")
    run_dir = tmp / "run"
    job, log = _sbatch(slurm_cluster, tmp, "ref", f"hydra.run.dir={run_dir}")
    state = slurm_cluster.wait(job, 300)
    return job, state, run_dir, log


def test_sbatch_script_trains_tiny(slurm_cluster, reference_run):
    job, state, run_dir, log = reference_run
    text = log.read_text() if log.exists() else "(no log)"
    assert state == "COMPLETED", text
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["world_size"] == 1
    assert summary["experiment"] == "tiny" and f"train.max_steps={STEPS}" in summary["overrides"]
    assert 0.0 < summary["final_loss"] < 20.0 and 0.0 <= summary["sparsity"] <= 1.0
    assert sorted(_losses(run_dir)) == list(range(1, STEPS + 1))
    assert "via torchrun" in text and "job step finished" in text
    assert slurm_cluster.restarts(job) == 0


def test_sparsity_sweep_through_submitit(slurm_cluster, reference_run, tmp_path):
    assert reference_run[1] == "COMPLETED"  # the data is prepared; the jobs only read it
    # The default sweep dir's timestamp, resolved again in every job, must agree with the
    # submitting process's (L2A_RUN_TIMESTAMP travels with the job's environment).
    cmd = sweep_command("train", tmp_path / "${l2a_timestamp:}", *TINY, "train.max_steps=3",
                        "l2a.sparsity_target=0.5,0.9")
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400,
                         env={**__import__("os").environ, "WANDB_MODE": "disabled"})
    logs = "\n".join(p.read_text() for p in tmp_path.glob("*/.submitit/*/*.err"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:] + logs[-5000:]
    (sweep_dir,) = list(tmp_path.iterdir())
    for num, target in (("0", 0.5), ("1", 0.9)):
        summary = json.loads((sweep_dir / num / "summary.json").read_text())
        assert summary["steps"] == 3 and summary["sparsity_target"] == target
        assert f"l2a.sparsity_target={target}" in summary["overrides"]
    rows = list(csv.DictReader(summarize(sweep_dir)["csv"].open()))
    assert [r["l2a.sparsity_target"] for r in rows] == ["0.5", "0.9"]
    assert all(r["status"] == "done" and r["steps"] == "3" and float(r["final_loss"]) > 0
               for r in rows)
    assert all(float(r["tokens_per_s"]) > 0 for r in rows)
    assert (sweep_dir / "sweep_summary.png").exists()


def test_pre_timeout_signal_resumes_with_the_same_losses(slurm_cluster, reference_run, tmp_path):
    _, state, ref_dir, _ = reference_run
    assert state == "COMPLETED"
    # The default run dir of the scripts: outputs/<name>/slurm-<job id>, stable across requeues.
    # The trainer's test hook holds the first start after step 2 until the signal has come
    # (the batch shell repeats it every second until the trainer takes it), so the run cannot
    # finish first on a slow node: the signal's checkpoint is at step 1 or 2.
    job, log = _sbatch(slurm_cluster, tmp_path, "preempt",
                       env={"L2A_FAULT": "wait_signal_after_step:2", "L2A_RESIGNAL_S": "1"})
    run_dir = REPO / "outputs" / "tiny" / f"slurm-{job}"
    try:
        deadline = time.time() + 240
        while not ((run_dir / "metrics.jsonl").exists() and _losses(run_dir)):
            assert slurm_cluster.state(job) in {"PENDING", "RUNNING"}, log.read_text()
            if time.time() > deadline:
                pytest.fail("no training step logged in 240 s: "
                            + (log.read_text()[-3000:] if log.exists() else "(no log)"))
            time.sleep(0.2)
        # What `--signal=B:USR1@600` does 10 minutes before the time limit.
        slurm_cluster.run("scancel", "--signal=USR1", "--batch", job)
        assert slurm_cluster.wait(job, 300) == "COMPLETED", log.read_text()
        text = log.read_text()
        assert slurm_cluster.restarts(job) == 1, text
        assert "requeueing job" in text and "train.resume=auto" in text
        checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
        saved = int(checkpoints[0].removeprefix("step_"))
        assert 1 <= saved <= 2, checkpoints  # the signal's checkpoint, held at step 2 at the latest
        resumed = json.loads((run_dir / "summary.json").read_text())
        assert resumed["steps"] == STEPS
        ref, got = _losses(ref_dir), _losses(run_dir)
        assert sorted(got) == list(range(1, STEPS + 1))
        for step in range(1, STEPS + 1):
            assert got[step] == pytest.approx(ref[step], rel=1e-6, abs=1e-7), (step, saved)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
