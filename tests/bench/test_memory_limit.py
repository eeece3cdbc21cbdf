"""bench.memory_limit: the watch that ends a memory probe once the peak passes a bound."""

import threading

import pytest

from bench.memory_limit import MemoryLimitWatch


def test_fires_once_when_the_peak_passes_the_limit():
    readings = iter([10, 50, 99, 100, 101, 500, 600])
    fired: list = []
    done = threading.Event()

    def on_exceed(peak, seconds):
        fired.append((peak, seconds))
        done.set()

    with MemoryLimitWatch(100, lambda: next(readings, 700), on_exceed, interval=0.001):
        assert done.wait(5)
    # 100 is not over a limit of 100; 101 is the first reading above it, and only once.
    assert [p for p, _ in fired] == [101]
    assert fired[0][1] >= 0


def test_never_fires_under_the_limit():
    fired: list = []
    reads = []

    def read():
        reads.append(1)
        return 100

    watch = MemoryLimitWatch(100, read, lambda p, s: fired.append(p), interval=0.001).start()
    while len(reads) < 20:
        pass
    watch.stop()
    assert fired == [] and len(reads) >= 20


def test_refuses_a_bound_of_nothing():
    with pytest.raises(ValueError, match="limit_bytes"):
        MemoryLimitWatch(0, lambda: 0, lambda p, s: None)
