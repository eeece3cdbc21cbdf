"""Files the framework writes follow the user's umask.

`tempfile.mkdtemp` creates its directory 0700 whatever the umask, and safetensors writes its
files 0600: a model exported or converted (or cached) would be unreadable by teammates on a
shared cluster. Everything that writes through a temporary directory makes it here and
sets the modes of what it wrote with `follow_umask` before renaming it into place.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
