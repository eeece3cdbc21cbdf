"""Fixtures for the launcher tests: a real one-node Slurm cluster (tests marked `slurm`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.launch.slurm_cluster import SlurmCluster, ensure_installed  # noqa: E402


@pytest.fixture(scope="session")
def slurm_cluster():
    """A one-node Slurm cluster (munge, MariaDB + slurmdbd, slurmctld, slurmd) for the whole
    session; SLURM_CONF is exported while it runs. Installs the Debian packages as root when
    missing; skips with the reason when that is impossible."""
    reason = ensure_installed()
    if reason:
        pytest.skip(f"no Slurm for the slurm tests: {reason}")
    cluster = SlurmCluster().start()
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        cluster.stop()


# What an in-process run earlier in the same pytest session leaves in os.environ: the
# single-process rendezvous of train.distributed (RANK ... MASTER_PORT) and the run
# timestamp of train.config. Jobs started from here must derive their own, as on a login
# node (an inherited MASTER_PORT replaces the job-id port of launch/slurm_job.sh).
_INHERITED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
              "MASTER_PORT", "L2A_RUN_TIMESTAMP")


@pytest.fixture(autouse=True)
def _clean_launch_environment(monkeypatch):
    for name in _INHERITED:
        monkeypatch.delenv(name, raising=False)
