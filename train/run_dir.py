"""A run directory belongs to the run that trains in it.

* **Lock.** Rank 0 holds an exclusive `flock` on `<run dir>/.lock` while the run lives. A
  second trainer started on the same directory is refused with one line naming the process
  that holds it. The kernel drops a flock with its process, so a run that was killed
  (SIGKILL, out of memory, a lost node) leaves no stale lock: the next run takes it. The
  file is removed when the run ends; a killed run leaves it (a few bytes naming the dead
  holder, locking nothing) until the next run there ends. The lock is a file, not the
  directory itself, because NFS emulates flock with byte-range locks, which need a file
  opened for writing, and because it names its holder (pid and host) to a run on another
  node.
* **`train.resume=never`** means a new run: in a directory that already holds one (a
  complete checkpoint or logged steps) it is refused, not mixed with the old run's metrics,
  checkpoints and export. `auto` (the default) continues it.
* **Leftovers.** Temporary directories (and files) of a checkpoint save, an export or a
  metrics rewrite that was interrupted are removed when the next run takes the lock
  (nobody else writes there).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
from pathlib import Path

LOCK_FILE = ".lock"


class RunDirError(RuntimeError):
    """The run directory cannot be used by this run; the message is one line."""


class RunDirLock:
    """An exclusive, non-blocking flock on `<run dir>/.lock` (released by `release` or
    when the process ends)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise RunDirError(_in_use(self.path.parent, holder)) from None
            # The holder may have removed the file between our open and our lock: the lock
            # is then on a file nobody else will find. Try again on the current one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()  # while still held: a waiting opener retries on a new file
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 200).decode(errors="replace").strip() or "another process"


def _in_use(run_dir: Path, holder: str) -> str:
    return (f"{run_dir}: in use by another run ({holder}); wait for it to end or choose "
            f"another run directory (hydra.run.dir=...)")


def in_use_by_another_run(run_dir: str | os.PathLike) -> str | None:
    """The one-line refusal if a live run holds `run_dir`'s lock, else None (the lock is
    left as it was). For a check before anything is written into the directory."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _in_use(Path(run_dir), _holder(fd))
    except OSError:
        return None
    finally:
        os.close(fd)  # also drops the lock if this check took it
    return None


def holds_a_run(run_dir: Path) -> bool:
    """A complete checkpoint or logged steps: what a new run here would mix with."""
    from train.checkpoint import list_complete

    metrics = run_dir / "metrics.jsonl"
    return bool(list_complete(run_dir)) or (metrics.is_file() and metrics.stat().st_size > 0)


def check_new_run(resume: str, run_dir: Path) -> None:
    if resume == "never" and holds_a_run(run_dir):
        raise RunDirError(
            f"train.resume=never: {run_dir} already holds a run (checkpoints or logged steps); "
            f"continue it with train.resume=auto, or start the new run in another directory "
            f"(hydra.run.dir=...)")


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Temporary directories of interrupted saves and exports (under the lock: no save or
    export of another process can be in flight). Returns what was removed."""
    from train.checkpoint import CKPT_SUBDIR

    found = []
    ckpts = run_dir / CKPT_SUBDIR
    if ckpts.is_dir():
        found += [p for p in ckpts.iterdir() if p.name.startswith(".tmp-")]
        for step in ckpts.iterdir():  # a conversion to the universal form, interrupted
            if step.is_dir() and not step.name.startswith("."):
                found += [p for p in step.iterdir() if p.name.startswith(".tmp-")]
    if run_dir.is_dir():
        found += [p for p in run_dir.iterdir()
                  if p.name.startswith((".export.tmp-", "summary.json.tmp", "metrics.jsonl.tmp"))]
    for p in found:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
    return found
