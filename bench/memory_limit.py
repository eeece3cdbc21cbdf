"""Stop a memory probe as soon as a GPU's allocated peak passes a bound.

A probe such as "does dense train a 512K step under 130 GiB per GPU?" is answered the
moment the peak passes the bound; the rest of a seven-minute step adds nothing. A daemon
thread polls the allocator's peak (`torch.cuda.max_memory_allocated`, the figure the
benchmarks report) and calls `on_exceed` once, with the peak and the seconds since start.
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class MemoryLimitWatch:
    """Polls `read()` (bytes) every `interval` s from a daemon thread; once it exceeds
    `limit_bytes`, calls `on_exceed(peak_bytes, seconds_since_start)` and stops polling."""

    def __init__(self, limit_bytes: int, read: Callable[[], int],
                 on_exceed: Callable[[int, float], None], interval: float = 0.25):
        if limit_bytes <= 0:
            raise ValueError(f"limit_bytes: must be > 0, got {limit_bytes}")
        self.limit_bytes = limit_bytes
        self.read = read
        self.on_exceed = on_exceed
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-limit-watch", daemon=True)
        self._t0 = time.perf_counter()

    def start(self) -> MemoryLimitWatch:
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            peak = int(self.read())
            if peak > self.limit_bytes:
                self.on_exceed(peak, time.perf_counter() - self._t0)
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> MemoryLimitWatch:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def cuda_peak_reader(device: int) -> Callable[[], int]:
    """The allocator peak of `device`, named explicitly: the watching thread's own current
    device is GPU 0 whatever the rank's is."""
    import torch

    return lambda: torch.cuda.max_memory_allocated(device)
