"""A stand-in for `python -m train` that keeps the trainer's launcher contract, so the Slurm
scripts can be tested in seconds: `key=value` arguments, a run directory, `resume=auto`,
SIGUSR1/SIGTERM -> finish the step, write a checkpoint, exit 75; `summary.json` at the end.

    python -m tests.launch.fake_trainer run_dir=DIR steps=20 step_s=0.2 [save_s=0] [start_s=0]
        [resume=auto] [wait_signal_at=K]

`wait_signal_at=K`: on the first start, a rank that reaches step K without a preemption
signal waits for one (up to 120 s, then exits 3 saying so), so a signal test cannot lose
the race against the end of the run on a slow machine.

Every rank records its distributed environment in DIR/ranks/<start>-<rank>.json.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    args = dict(a.split("=", 1) for a in argv)
    run_dir = Path(args["run_dir"])
    steps, step_s = int(args.get("steps", 10)), float(args.get("step_s", 0.2))
    save_s = float(args.get("save_s", 0))
    start_s = float(args.get("start_s", 0))  # "loading the model": no signal handler yet
    wait_at = int(args.get("wait_signal_at", 0))
    rank = int(os.environ.get("RANK", "0"))
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    (run_dir / "ranks").mkdir(parents=True, exist_ok=True)
    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "OMP_NUM_THREADS", "SLURM_JOB_ID", "SLURM_RESTART_COUNT", "TORCH_NCCL_ASYNC_ERROR_HANDLING")
    info = {k: os.environ.get(k) for k in keys} | {"argv": argv, "pid": os.getpid()}
    (run_dir / "ranks" / f"{restart}-{rank}.json").write_text(json.dumps(info))

    time.sleep(start_s)
    stop: list[int] = []
    for s in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(s, lambda signum, _f: stop.append(signum))
    ckpt = run_dir / "checkpoint.json"
    step = json.loads(ckpt.read_text())["step"] if args.get("resume", "auto") == "auto" and ckpt.exists() else 0
    print(f"rank {rank}: starting at step {step}", flush=True)
    while step < steps:
        time.sleep(step_s)
        step += 1
        if rank == 0:
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "loss": 1.0 / step}) + "\n")
        if step == wait_at and restart == 0 and not stop:
            deadline = time.monotonic() + 120
            while not stop and time.monotonic() < deadline:
                time.sleep(0.05)
            if not stop:
                print(f"rank {rank}: no preemption signal within 120 s at step {step}", flush=True)
                return 3
        if stop:
            time.sleep(save_s)
            if rank == 0:
                ckpt.write_text(json.dumps({"step": step}))
            print(f"rank {rank}: signal {stop[0]}, saved step {step}, exiting 75", flush=True)
            return 75
    if rank == 0:
        (run_dir / "summary.json").write_text(json.dumps({"steps": step, "final_loss": 1.0 / step}))
    print(f"rank {rank}: done at step {step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
