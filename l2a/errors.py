"""The one error type of a bad setting, and the one-line forms of other errors.

Every entry point (`python -m train`, `train.data.prepare`, `eval`, `l2a.prune`) prints a
:class:`ConfigError` as one line (``error: model.base: ...``) and exits with code 2. It lives
here, at the bottom of the packages that read settings (l2a < train < eval), so that each of
them raises the same type without importing upwards.
"""

from __future__ import annotations

import contextlib
import errno
import os


class ConfigError(ValueError):
    """A bad setting; the message is one line that starts with the override path that fixes
    it (``data.sources.0.weight: must be >= 0, got -1``)."""


def first_line(err: BaseException, with_type: bool = False) -> str:
    """The first informative line of an error (library errors run over many lines).

    torch's load_state_dict error starts with a header ("Error(s) in loading state_dict
    for X:"): its first cause (which parameter, which shapes) is the line worth showing.
    `with_type`: prefix the exception's type (where the type is the information, e.g.
    ``UnpicklingError: ...``)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    line = lines[0]
    if len(lines) > 1 and line.startswith("Error(s) in loading state_dict"):
        causes = [ln for ln in lines[1:] if ln.lower().startswith(
            ("size mismatch", "missing key", "unexpected key"))]
        more = f" (and {len(causes) - 1} more)" if len(causes) > 1 else ""
        line = (causes or lines[1:])[0] + more
    return f"{type(err).__name__}: {line}" if with_type else line


# Errors of the machine rather than of the program: the disk, permissions, the filesystem.
FAULT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                          errno.ENOTDIR, errno.EISDIR, errno.EIO, errno.EFBIG, errno.ENAMETOOLONG})


def is_machine_fault(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in FAULT_ERRNOS


def fault_line(err: OSError, path: str | os.PathLike | None = None) -> str:
    """``<path>: cannot write (No space left on device)``: the path and the cause in one line.
    `path`: what the caller was writing, where the error itself names no file."""
    where = err.filename if err.filename is not None else path
    cause = err.strerror or (os.strerror(err.errno) if err.errno else first_line(err))
    return f"{where}: cannot write ({cause})" if where is not None else f"cannot write ({cause})"


class WriteError(RuntimeError):
    """Writing failed for a reason of the machine (a full disk, a read-only or missing
    directory); the message names the path and the cause in one line. Whatever was written
    before stays usable: checkpoints, exports and prepared data are renamed into place only
    once complete."""


def _torch_write_failure(err: BaseException) -> bool:
    # torch.save reports a failed write as a RuntimeError without errno
    # ("PytorchStreamWriter failed writing file data/0: file write failed").
    text = str(err)
    return isinstance(err, RuntimeError) and ("file write failed" in text
                                              or "PytorchStreamWriter failed" in text)


def _under(filename, root) -> bool:
    """`filename` is `root`, below it, or below a temporary sibling it is made in
    (``<root>.tmp-<pid>``, ``.<name>.tmp-<id>``)."""
    if filename is None:
        return True  # a write() on an open file names none
    try:
        name = os.path.abspath(os.fsdecode(filename))
        base = os.path.abspath(os.fspath(root))
    except (TypeError, ValueError):
        return False
    if name == base or name.startswith(base + os.sep):
        return True
    parent, stem = os.path.split(base)
    first = os.path.relpath(name, parent).split(os.sep)[0]
    return not first.startswith("..") and first.startswith((stem + ".", "." + stem + "."))


@contextlib.contextmanager
def writing_to(path: str | os.PathLike):
    """Turn a machine fault while writing under `path` into a one-line :class:`WriteError`
    (the file the error names, else `path`)."""
    try:
        yield
    except WriteError:
        raise
    except OSError as err:
        if not is_machine_fault(err) or not _under(err.filename, path):
            raise  # not a write under `path` (reading an input, say): its own report
        raise WriteError(fault_line(err, path)) from err
    except RuntimeError as err:
        if not _torch_write_failure(err):
            raise
        raise WriteError(f"{path}: cannot write ({first_line(err)}; is the disk full?)") from err
