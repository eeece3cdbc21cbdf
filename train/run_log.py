"""`<run dir>/train.log`: what rank 0 of a run printed (configuration summary, data
statistics, warnings, the error that ended it) plus progress lines at an interval, with a
time stamp per line. Hydra's job logging writes its own records into the same file.

A progress bar redraws its line with carriage returns; the file keeps the text after the
last one of each line (so a bar leaves its final state only).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import time
import traceback
from pathlib import Path

RUN_LOG = "train.log"
_STAMPED = re.compile(r"^\[\d{4}-\d\d-\d\d[ T]\d\d:\d\d")


def _stamp() -> str:
    return time.strftime("[%Y-%m-%d %H:%M:%S]")


def append_to_run_log(run_dir: str | os.PathLike, text: str) -> None:
    """One or more lines, time-stamped, straight into the file (not to the console)."""
    path = Path(run_dir) / RUN_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.writelines(f"{_stamp()} {line}\n" for line in text.splitlines())


class _Tee:
    """A text stream that writes through to `stream` and copies whole lines to `log`."""

    def __init__(self, stream, log):
        self._stream, self._log, self._pending = stream, log, ""

    def write(self, text: str) -> int:
        n = self._stream.write(text)
        *lines, self._pending = (self._pending + text).split("\n")
        if self._log is None:
            return n if n is not None else len(text)
        try:
            for line in lines:
                line = line.rsplit("\r", 1)[-1].rstrip()
                if line:  # library log records carry their own time stamp
                    self._log.write(f"{line}\n" if _STAMPED.match(line) else f"{_stamp()} {line}\n")
            if lines:
                self._log.flush()
        except OSError:
            # A full disk must not turn the report of the error (printed to the console
            # still) into a second error: the log stops here.
            self._log = None
        return n if n is not None else len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, buffer... of the real stream
        return getattr(self._stream, name)


def _how_it_ended(err: BaseException, rank: int) -> str:
    who = f"rank {rank} " if rank else ""
    if isinstance(err, KeyboardInterrupt):
        return f"{_stamp()} {who}interrupted (Ctrl-C)\n"
    return f"{_stamp()} {who}uncaught error:\n{traceback.format_exc()}"


@contextlib.contextmanager
def copy_output_to_run_log(run_dir: str | os.PathLike):
    """On rank 0 (RANK unset or 0): copy stdout and stderr into `<run dir>/train.log`. On
    every rank, an uncaught error (or Ctrl-C) that ends the run is appended to it: the
    console shows the traceback once (Python prints it after this), the log keeps it, with
    the rank where it is not rank 0's (a run that another rank's failure ended)."""
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:
        try:
            yield
        except (Exception, KeyboardInterrupt) as e:
            with contextlib.suppress(OSError), open(Path(run_dir) / RUN_LOG, "a") as log:
                log.write(_how_it_ended(e, rank))  # one append: ranks do not interleave
            raise
        return
    path = Path(run_dir) / RUN_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    old_out, old_err = sys.stdout, sys.stderr
    log = open(path, "a")
    sys.stdout, sys.stderr = _Tee(old_out, log), _Tee(old_err, log)
    try:
        yield
    except (Exception, KeyboardInterrupt) as e:
        with contextlib.suppress(OSError):
            log.write(_how_it_ended(e, rank))
            log.flush()
        raise
    finally:
        sys.stdout, sys.stderr = old_out, old_err
        with contextlib.suppress(OSError):  # a full disk: the last buffered lines are lost
            log.close()


def discard_empty_run_dir(run_dir) -> None:
    """A failed run leaves nothing behind: drop the dir Hydra made if it holds only its
    own files and the log (the error was printed). Used by `python -m train` and
    `python -m eval`."""
    run_dir = Path(run_dir)
    if run_dir.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)
