"""The trainer's `L2A_FAULT=wait_signal_after_step:<k>` hook, which the Slurm preemption
tests use so that a late signal cannot lose the race against the end of a short run: the
first start holds after step k until SIGUSR1 arrives, then checkpoints there and exits 75."""

from __future__ import annotations

import os
import signal
import threading
import time

from train_helpers import read_metrics, run_in_process


def test_run_holds_at_the_step_until_the_signal(base_overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("L2A_FAULT", "wait_signal_after_step:2")
    run_dir = tmp_path / "run"
    overrides = base_overrides + ["train.max_steps=5", "train.ckpt_every=0",
                                  "train.save_final=false"]

    def late_signal():
        # After step 2 is logged: without the hold the run would be past step 2 by then.
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if (run_dir / "metrics.jsonl").exists() and len(read_metrics(run_dir)) >= 2:
                break
            time.sleep(0.05)
        time.sleep(1)
        os.kill(os.getpid(), signal.SIGUSR1)

    # A signal that comes after the run (the hook broken) must not end the test process.
    old = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        sender = threading.Thread(target=late_signal, daemon=True)
        sender.start()
        code, _ = run_in_process(overrides, run_dir)
        sender.join(timeout=30)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert code == 75
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_00000002"]
