"""Files the framework writes follow the user's umask.

`tempfile.mkdtemp` creates its directory 0700 whatever the umask, and safetensors writes its
files 0600: a model exported or converted (or cached) would be unreadable by teammates on a
shared cluster. Everything that writes through a temporary directory makes it here and
sets the modes of what it wrote with `follow_umask` before renaming it into place.

A temporary directory made by `held_temp_dir` carries an exclusive `flock` of its writer
while it is written: a writer killed midway (SIGKILL, out of memory, a lost node) leaves
it behind unlocked (the kernel drops the lock with the process), and the next writer to the
same place removes it (`remove_abandoned_temp_dirs`), while one still being written by a
live process (another node converting the same cache entry) is left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import tempfile
from pathlib import Path

_BORN = ".new"  # a held directory's name until it is locked: no remover matches it


def current_umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, for a moment, for all threads)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A fresh directory under `parent` (unique name, like mkdtemp), with the mode a plain
    `mkdir` would give it (0777 minus the umask)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(path, 0o777 & ~current_umask())
    return path


def follow_umask(root: str | os.PathLike) -> None:
    """Give `root` and everything under it the modes plain `mkdir` / `open` would have:
    directories 0777 and files 0666 minus the umask (files keep execute bits they had)."""
    mask = current_umask()
    root = Path(root)
    os.chmod(root, 0o777 & ~mask)
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~mask)
        for f in files:
            path = os.path.join(dirpath, f)
            execute = os.stat(path).st_mode & 0o111
            os.chmod(path, (0o666 | execute) & ~mask)


@contextlib.contextmanager
def held_temp_dir(parent: str | os.PathLike, prefix: str):
    """`make_temp_dir`, locked by this process until the block ends. It is locked under
    another name and renamed to `<prefix>...` only then, so a remover never sees it
    unlocked while its writer lives."""
    born = make_temp_dir(parent, prefix=f"{_BORN}{prefix}")
    fd = os.open(born, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):  # no directory locks here: never removed, then
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path = born.with_name(prefix + born.name[len(_BORN + prefix):])
        try:
            os.rename(born, path)
        except OSError:
            path = born
        yield path
    finally:
        os.close(fd)  # releases the lock (the directory may have been renamed into place)


def remove_abandoned_temp_dirs(parent: str | os.PathLike, prefix: str) -> list[Path]:
    """Remove the directories `<parent>/<prefix>*` whose writer is gone (their lock can be
    taken); returns them. One that is locked, or cannot be locked here, stays."""
    removed = []
    for name in sorted(glob.glob(glob.escape(prefix) + "*", root_dir=parent)):
        path = Path(parent) / name
        if path.is_symlink() or not path.is_dir():
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: its writer is alive
            continue
        else:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed

