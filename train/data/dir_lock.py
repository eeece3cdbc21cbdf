"""An exclusive lock on a directory (``flock`` on the directory itself), held while one
process prepares data there and the others wait to reuse it.

A lock *file* (``<out>.lock``) stays behind after every run: removing it on release races
with a process that opened it and waits. A directory is locked in place, so nothing is
created; a killed holder's lock goes with its process. The price: preparations into the same
parent directory wait for each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import os


@contextlib.contextmanager
def locked_dir(path: str | os.PathLike, blocking: bool = True):
    """Hold the lock of directory `path` (which must exist); with `blocking=False`, raise
    BlockingIOError when another process holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
