"""hydra/launcher=slurm and =local compose with the project's config and take the cluster
values from `local.slurm` (conf/local/default.yaml); the local launcher runs a sweep as
one process per job. No Slurm needed here (the Slurm runs: test_slurm_*.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import train.config  # noqa: F401  (registers the run-dir timestamp resolver)
from launch.local_launcher import LocalLauncher

REPO = Path(__file__).resolve().parents[2]


def _launcher_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    return cfg


def test_slurm_launcher_takes_cluster_values_from_local(tmp_path):
    cfg = _launcher_cfg(
        "experiment=tiny", "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path}",
        "++local.slurm.partition=gpu", "++local.slurm.account=proj", "++local.slurm.gpus_per_node=8",
        "++local.slurm.cpus_per_task=12", "++local.slurm.timeout_min=240",
        "++local.slurm.setup=[module load cuda]",
    )
    launcher = instantiate(cfg.hydra.launcher)
    p = launcher.params
    assert type(launcher).__module__ == "hydra_plugins.l2a_launchers.l2a_launchers"
    assert (p["partition"], p["account"], p["gpus_per_node"]) == ("gpu", "proj", 8)
    assert p["tasks_per_node"] == 8  # one process per GPU
    assert (p["cpus_per_task"], p["timeout_min"], p["nodes"]) == (12, 240, 1)
    assert p["signal_delay_s"] == 600 and p["max_num_timeout"] == 100
    assert p["name"] == "l2a-tiny" and p["submitit_folder"] == f"{tmp_path}/.submitit/%j"
    # Our environment first, then the site's lines.
    assert p["setup"][0] == f"source {REPO / 'launch' / 'env_defaults.sh'}"
    assert p["setup"][-1] == "module load cuda"


def test_slurm_launcher_defaults_without_local_file(tmp_path):
    cfg = _launcher_cfg("experiment=tiny", "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path}",
                        "~local")  # as on a machine without conf/local/default.yaml
    p = instantiate(cfg.hydra.launcher).params
    assert p["partition"] is None and p["account"] is None and p["gpus_per_node"] is None
    assert p["tasks_per_node"] == 1 and p["timeout_min"] == 1440
    assert p["additional_parameters"] == {}


def test_command_line_beats_local(tmp_path):
    cfg = _launcher_cfg("experiment=tiny", "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path}",
                        "++local.slurm.partition=gpu", "hydra.launcher.partition=debug",
                        "++local.slurm.gpus_per_node=8", "hydra.launcher.tasks_per_node=2")
    p = instantiate(cfg.hydra.launcher).params
    assert p["partition"] == "debug" and p["tasks_per_node"] == 2


def test_local_launcher_config_and_command(monkeypatch):
    cfg = _launcher_cfg("experiment=tiny", "hydra/launcher=local")
    launcher = instantiate(cfg.hydra.launcher)
    assert isinstance(launcher, LocalLauncher) and launcher.nproc_per_node == "auto"
    launcher.module = "train"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert launcher.command(["a=1"]) == [sys.executable, "-m", "train", "a=1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    cmd = launcher.command(["a=1"])
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
                        "--max-restarts=0"] and cmd[-3:] == ["-m", "train", "a=1"]
    with pytest.raises(ValueError, match="hydra.launcher.nproc_per_node"):
        LocalLauncher(nproc_per_node=0)


def _local_sweep(tmp_path, *overrides):
    return subprocess.run(
        [sys.executable, "-m", "tests.launch.fake_hydra_app", "-m", "hydra/launcher=local",
         f"hydra.searchpath=[file://{REPO}/conf]", f"hydra.sweep.dir={tmp_path / 'sweep'}",
         "steps=2", "step_s=0.01", *overrides],
        cwd=REPO, capture_output=True, text=True, timeout=120)


def test_local_sweep_runs_each_point_in_its_own_process(tmp_path):
    out = _local_sweep(tmp_path, "l2a.sparsity_target=0.6,0.8")
    assert out.returncode == 0, out.stdout + out.stderr
    pids = set()
    for num, target in (("0", 0.6), ("1", 0.8)):
        run = tmp_path / "sweep" / num
        summary = json.loads((run / "summary.json").read_text())
        assert summary["sparsity_target"] == target and summary["steps"] == 2
        assert OmegaConf.load(run / ".hydra" / "overrides.yaml")[-1] == f"l2a.sparsity_target={target}"
        (rank,) = [json.loads(p.read_text()) for p in (run / "ranks").glob("*.json")]
        pids.add(rank["pid"])
    assert len(pids) == 2


def test_local_sweep_reports_a_failed_job_and_runs_the_others(tmp_path):
    out = _local_sweep(tmp_path, "steps=bad,2")  # job 0 dies on int("bad")
    assert out.returncode != 0
    assert "job #0 (steps=bad step_s=0.01): exited with 1" in out.stderr
    assert "Traceback" not in out.stderr.split("sweep job(s) failed")[-1]
    assert not (tmp_path / "sweep" / "0" / "summary.json").exists()
    assert json.loads((tmp_path / "sweep" / "1" / "summary.json").read_text())["steps"] == 2
