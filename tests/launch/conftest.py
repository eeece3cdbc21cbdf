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
