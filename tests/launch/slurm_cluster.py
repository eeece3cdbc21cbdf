"""A throwaway one-node Slurm cluster for the launcher tests (CPU only, no cgroups).

`SlurmCluster.start()` brings up, all inside one temporary directory and on free ports:
munged (its own key and socket), MariaDB + slurmdbd (so that `sacct` works: submitit
relies on it to notice jobs that died without a result file), slurmctld and slurmd.
`stop()` cancels the jobs, stops the daemons it started (by pid) and removes the directory.

`ensure_installed()` installs Debian's slurm-wlm, slurmdbd, munge and mariadb-server when
they are missing and we are root with apt; otherwise it returns the reason it can't, which
the tests turn into a skip.

Debugging by hand:
    .venv/bin/python -m tests.launch.slurm_cluster   # starts one, prints SLURM_CONF, waits
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

# Debian packages and one binary from each that proves it is installed.
PACKAGES = {
    "slurm-wlm": "slurmctld",
    "slurmd": "slurmd",
    "slurm-client": "sbatch",
    "slurmdbd": "slurmdbd",
    "munge": "munged",
    "mariadb-server": "mariadbd",
}
SBIN_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in SBIN_DIRS:
        p = Path(d) / name
        if p.exists() and os.access(p, os.X_OK):
            return str(p)
    return None


def _missing_packages() -> list[str]:
    return [pkg for pkg, binary in PACKAGES.items() if _which(binary) is None]


def ensure_installed(timeout_s: int = 600) -> str | None:
    """Install the Debian packages if needed. Returns None when ready, else why not."""
    if os.environ.get("L2A_SKIP_SLURM_TESTS"):
        return "L2A_SKIP_SLURM_TESTS is set"
    if not Path("/etc/debian_version").exists() and _missing_packages():
        return f"Slurm is not installed ({', '.join(_missing_packages())}) and this is not Debian"
    missing = _missing_packages()
    if not missing:
        return None
    if os.geteuid() != 0:
        return f"Slurm is not installed ({', '.join(missing)}) and we are not root to apt-get it"
    if _which("apt-get") is None:
        return "Slurm is not installed and apt-get is not available"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    # Package scripts would start system-wide munge/mariadb/slurm services we don't use;
    # a temporary policy-rc.d (the Debian mechanism for this) keeps them off.
    policy = Path("/usr/sbin/policy-rc.d")
    created_policy = False
    try:
        if not policy.exists():
            policy.write_text("#!/bin/sh\nexit 101\n")
            policy.chmod(0o755)
            created_policy = True
        out = subprocess.run(install, env=env, capture_output=True, text=True, timeout=timeout_s)
        if out.returncode != 0:  # a clean machine may have no package lists yet
            subprocess.run(
                ["apt-get", "update", "-q"], env=env, capture_output=True, timeout=timeout_s
            )
            out = subprocess.run(
                install, env=env, capture_output=True, text=True, timeout=timeout_s
            )
        if out.returncode != 0:
            tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
            return f"apt-get install {' '.join(missing)} failed: {' | '.join(tail)}"
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"apt-get install {' '.join(missing)} failed: {e}"
    finally:
        if created_policy:
            policy.unlink(missing_ok=True)
    still = _missing_packages()
    if still:
        return f"packages still missing after apt-get: {', '.join(still)}"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmClusterError(RuntimeError):
    pass


class SlurmCluster:
    """One slurmctld + one slurmd (+ slurmdbd/MariaDB) under `root`, for tests."""

    def __init__(self, root: str | Path | None = None, accounting: bool = True, cpus: int = 2):
        self.root = Path(root or tempfile.mkdtemp(prefix="l2a-slurm-"))
        self.accounting = accounting
        self.cpus = max(cpus, os.cpu_count() or 1)
        self.node = socket.gethostname().split(".")[0]
        self.user = getpass.getuser()
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "etc" / "slurm.conf"
        self.munge_socket = self.root / "munge-run" / "munge.socket.2"

    # ------------------------------------------------------------------ environment
    @property
    def env(self) -> dict[str, str]:
        """Variables that sbatch/srun/sacct/submitit need to talk to this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        out = subprocess.run(
            list(cmd), env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout
        )
        if check and out.returncode != 0:
            raise SlurmClusterError(
                f"{' '.join(cmd)} exited {out.returncode}: {out.stderr.strip() or out.stdout.strip()}"
            )
        return out

    # ------------------------------------------------------------------ jobs
    def sbatch(self, *args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None) -> str:
        """Submit; returns the job id."""
        out = subprocess.run(
            ["sbatch", "--parsable", *args], env={**os.environ, **self.env, **(env or {})},
            cwd=cwd, capture_output=True, text=True, timeout=60,
        )
        if out.returncode != 0:
            raise SlurmClusterError(f"sbatch {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout.strip().split(";")[0]

    def state(self, job_id: str) -> str:
        """Current state: squeue while the job is known to slurmctld, else sacct."""
        out = self.run("squeue", "-h", "-j", job_id, "-o", "%T", check=False)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0]
        out = self.run("sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id, check=False)
        states = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
        return states[-1] if states else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED

    def restarts(self, job_id: str) -> int:
        out = self.run("scontrol", "show", "job", job_id, check=False)
        for word in out.stdout.split():
            if word.startswith("Restarts="):
                return int(word.split("=", 1)[1])
        return -1

    def wait(self, job_id: str, timeout_s: float = 300) -> str:
        """Wait for the job to end; returns its final state (COMPLETED, FAILED, ...)."""
        active = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING",
                  "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "UNKNOWN"}
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            state = self.state(job_id)
            if state not in active:
                return state
            time.sleep(0.5)
        raise SlurmClusterError(f"job {job_id} still {self.state(job_id)} after {timeout_s:.0f} s")

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout_s: float = 90) -> SlurmCluster:
        try:
            self._layout()
            self._start_munge()
            if self.accounting:
                self._start_mariadb()
                self._start_slurmdbd()
            self._start_daemon("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
            self._wait(lambda: self.run("scontrol", "ping", check=False).returncode == 0,
                       "slurmctld to answer `scontrol ping`", timeout_s)
            self._start_daemon("slurmd", [_which("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)])
            self._wait(self._node_idle, f"node {self.node} to become idle", timeout_s)
            if self.accounting:
                self._wait(lambda: self.run("sacct", "-n", "-X", check=False).returncode == 0,
                           "sacct to answer", timeout_s)
        except Exception as e:
            logs = self.logs()
            self.stop()
            raise SlurmClusterError(f"the test Slurm cluster did not start: {e}\n{logs}") from None
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if "slurmctld" in self.procs:
            # Running jobs live in slurmstepd processes that outlast slurmd: cancel them first.
            self.run("scancel", "--user", self.user, check=False, timeout=20)
            deadline = time.time() + 15
            while time.time() < deadline:
                out = self.run("squeue", "-h", "-o", "%i", check=False, timeout=10)
                if out.returncode != 0 or not out.stdout.strip():
                    break
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadb", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def logs(self, lines: int = 40) -> str:
        out = []
        for log in sorted((self.root / "log").glob("*.log")) if (self.root / "log").exists() else []:
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"==> {log.name} <==\n" + "\n".join(text))
        return "\n".join(out)

    # ------------------------------------------------------------------ pieces
    def _layout(self) -> None:
        for d in ("etc", "log", "run", "state", "spool", "munge-run", "mysql"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        # munged insists on a private key directory but refuses a socket inside one.
        key_dir = self.root / "munge-key"
        key_dir.mkdir(mode=0o700, exist_ok=True)
        key_dir.chmod(0o700)
        (self.root / "munge-run").chmod(0o755)
        key = key_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.ports = {"ctld": _free_port(), "slurmd": _free_port(), "dbd": _free_port(),
                      "mysql": _free_port()}
        self.conf.write_text(self._slurm_conf())
        if self.accounting:
            dbd = self.root / "etc" / "slurmdbd.conf"
            dbd.write_text(self._slurmdbd_conf())
            dbd.chmod(0o600)  # slurmdbd refuses a config that others can read

    def _slurm_conf(self) -> str:
        r = self.root
        lines = [
            "ClusterName=l2atest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={self.ports['ctld']}",
            f"SlurmdPort={self.ports['slurmd']}",
            f"SlurmUser={self.user}",
            f"SlurmdUser={self.user}",
            "AuthType=auth/munge",
            # cred_expire also sets how long a requeued job waits before it may start
            # again (default 120 s); the requeue test should not sit that out.
            f"AuthInfo=socket={self.munge_socket},cred_expire=5",
            "CredType=cred/munge",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/run/slurmctld.pid",
            f"SlurmdPidFile={r}/run/slurmd.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log",
            f"SlurmdLogFile={r}/log/slurmd.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # No cgroups in containers and CI sandboxes.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "SchedulerType=sched/backfill",
            # Start jobs that became eligible (e.g. requeued ones) within seconds.
            "SchedulerParameters=sched_interval=2,bf_interval=1",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            "KillWait=10",
            "MinJobAge=600",
            "InactiveLimit=0",
            "JobCompType=jobcomp/none",
        ]
        if self.accounting:
            lines += [
                "AccountingStorageType=accounting_storage/slurmdbd",
                "AccountingStorageHost=127.0.0.1",
                f"AccountingStoragePort={self.ports['dbd']}",
                # With auth/munge this names the munge socket slurmctld uses for slurmdbd.
                f"AccountingStoragePass={self.munge_socket}",
            ]
        else:
            lines.append("AccountingStorageType=accounting_storage/none")
        lines += [
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=2000 State=UNKNOWN",
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]
        return "\n".join(lines) + "\n"

    def _slurmdbd_conf(self) -> str:
        r = self.root
        return "\n".join([
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "DbdHost=localhost",
            "DbdAddr=127.0.0.1",
            f"DbdPort={self.ports['dbd']}",
            f"SlurmUser={self.user}",
            f"LogFile={r}/log/slurmdbd.log",
            f"PidFile={r}/run/slurmdbd.pid",
            "StorageType=accounting_storage/mysql",
            "StorageHost=127.0.0.1",
            f"StoragePort={self.ports['mysql']}",
            "StorageUser=root",
            "StorageLoc=slurm_acct_db",
            "DebugLevel=info",
        ]) + "\n"

    def _start_daemon(self, name: str, cmd: list, log: str | None = None) -> subprocess.Popen:
        out = open(self.root / "log" / (log or f"{name}.stdout.log"), "ab")
        proc = subprocess.Popen(
            [str(c) for c in cmd], env={**os.environ, **self.env}, stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        out.close()
        self.procs[name] = proc
        return proc

    def _start_munge(self) -> None:
        r = self.root
        self._start_daemon("munged", [
            _which("munged"), "--foreground", "--force",
            f"--key-file={r}/munge-key/munge.key", f"--socket={self.munge_socket}",
            f"--pid-file={r}/run/munged.pid", f"--log-file={r}/log/munged.log",
            f"--seed-file={r}/run/munged.seed",
        ])
        self._wait(self.munge_socket.exists, "munged to create its socket", 20)

    def _start_mariadb(self) -> None:
        r = self.root
        install_db = _which("mariadb-install-db") or _which("mysql_install_db")
        out = subprocess.run(
            [install_db, "--no-defaults", f"--datadir={r}/mysql", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            capture_output=True, text=True, timeout=120,
        )
        if out.returncode != 0:
            raise SlurmClusterError(f"mariadb-install-db failed: {out.stderr.strip()[-2000:]}")
        self._start_daemon("mariadb", [
            _which("mariadbd") or _which("mysqld"), "--no-defaults", "--user=root",
            f"--datadir={r}/mysql", f"--socket={r}/run/mysqld.sock",
            f"--pid-file={r}/run/mysqld.pid", "--bind-address=127.0.0.1",
            f"--port={self.ports['mysql']}", f"--log-error={r}/log/mariadb.log",
            "--skip-grant-tables", "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=8M", "--skip-log-bin",
        ], log="mariadb.stdout.log")
        self._wait(lambda: self._port_open(self.ports["mysql"]), "MariaDB to listen", 60)

    def _start_slurmdbd(self) -> None:
        self._start_daemon("slurmdbd", [_which("slurmdbd"), "-D"])
        self._wait(lambda: self._port_open(self.ports["dbd"]), "slurmdbd to listen", 60)

    def _port_open(self, port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", port)) == 0

    def _node_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
        return out.returncode == 0 and out.stdout.strip().rstrip("*") in {"idle", "mixed"}

    def _wait(self, ready, what: str, timeout_s: float) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SlurmClusterError(f"{name} exited with {proc.returncode} while waiting for {what}")
            if ready():
                return
            time.sleep(0.2)
        raise SlurmClusterError(f"timed out after {timeout_s:.0f} s waiting for {what}")


if __name__ == "__main__":
    reason = ensure_installed()
    if reason:
        raise SystemExit(reason)
    t0 = time.time()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with SlurmCluster() as cluster:
        print(f"cluster up in {time.time() - t0:.1f} s")
        print(f"export SLURM_CONF={cluster.conf}", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
