"""The study on a GPU host (study/RESULTS.md, "On a GPU host without the data pipeline's
packages"): several runs at once per GPU, an optional wall-clock deadline (a scheduler's
time limit), and the results packed into one results folder (--out).

    python -m study.gpu_host pretrain --out results/base0 --gpus 0 --max-minutes 8
    python -m study.gpu_host arms --out results/arms --lengths 16k --seeds 0,1,2 --per-gpu 4 \\
        --max-steps 150 --deadline-minutes 120

`scripts/study_gpu.sh` installs an offline wheelhouse first where given and passes the job's
start time (--started-at), so that the deadline counts from the job's start.

pretrain: `python -m study pretrain` on one GPU; the base lands in <out>/base as safetensors
shards plus base-files.tar (config, tokenizer, and the pretraining's record and log under
study-results/ and study-logs/): a few files, one folder deep, to copy to the host of the
arms (.cache/study/base there).

arms: the data unpacked once, then every (arm, length, seed) of one base (--base-seed) trained in a thread with its own
run directory and GPU (runs spread round-robin over --gpus, --per-gpu at once on each). A
training run stops --reserve-minutes before the deadline (checkpoint, export, recorded as not
completed), leaving that time to evaluation and pruning, which start once every run has
trained: a queue of jobs (every model unpruned first, then the L2A models pruned by a half,
then by a quarter) worked off by --eval-per-gpu processes per GPU (default 1). A job running
at the deadline is killed and recorded as failed (with the samples it had scored, from its
log), one not started as skipped (without a deadline every job runs to its end). Then
<out>/study-arms.tar.gz is written with every result
JSON, the evaluations' per-sample records (results/samples/*.jsonl.gz), run summary, metrics
and log (no weights). One line per run is printed.

The modules that steps import in this process are imported before any thread starts
(`study.import_for_threads`): transformers' lazy import is not thread-safe.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import sys
import tarfile
import threading
import time
from pathlib import Path

from study import steps as study
from study.samples import record_files, records_dir
from study.steps import (
    ARMS,
    LENGTHS,
    LIVE,
    ROOT,
    SEEDS,
    Study,
    StudyError,
    _list,
    read_json,
    run_name,
    write_json,
)

TAR_NAME = "study-arms.tar.gz"
PACK_MARGIN_S = 15.0  # between the last step's end and the deadline: the tar, the summary
TRAIN_GRACE_S = 60.0  # a training run stopped by time: the step in flight, the checkpoint
# The archive holds records, not whatever a run wrote: a log or JSON bigger than
# MAX_PACKED_FILE stays in its run directory (--runs), and past MAX_TAR_BYTES the logs are
# left out altogether (the records stay in).
MAX_PACKED_FILE = 4 << 20
MAX_TAR_BYTES = 16 << 20
ARMS_SUMMARY = "arms-summary.json"  # in the archive's results/: one line of numbers per run


def runner(argv, log, max_seconds=None, env=None):
    """run_step with a grace after SIGTERM that fits a deadline: a trainer gets time to
    checkpoint, anything else is killed soon after."""
    training = argv[1:3] in (["-m", "train"], ["-m", "study.train_prepared"])
    return study.run_step(argv, log, max_seconds, env,
                          grace=TRAIN_GRACE_S if training else study.STOP_GRACE_S)


def plan(arms: list[str], lengths: list[str], seeds: list[int], gpus: list[str],
         per_gpu: int) -> list[tuple[str | None, list[tuple[str, str, int]]]]:
    """The runs as (GPU, queue) slots: run i goes to GPU i mod len(gpus), and each GPU's runs
    are dealt over its `per_gpu` slots. No GPUs (CPU): `per_gpu` slots, GPU None."""
    runs = [(a, n, s) for n in lengths for a in arms for s in seeds]
    devices = gpus or [None]
    slots = []
    for d, gpu in enumerate(devices):
        mine = runs[d::len(devices)]
        slots += [(gpu, mine[k::per_gpu]) for k in range(per_gpu) if mine[k::per_gpu]]
    return slots


def study_args(a, **over) -> argparse.Namespace:
    base = dict(scale=a.scale, runs=str(a.runs), results=str(a.results), base_dir=str(a.base_dir),
                max_minutes=a.max_minutes, data_archives=a.data_archives, data_unpacked=True,
                train_overrides=[f"train.max_steps={a.max_steps}"] if a.max_steps else [],
                deadline=a.deadline, reserve_s=a.reserve_minutes * 60,
                samples_dir=str(records_dir(Path(a.results))))
    return argparse.Namespace(**{**base, **over})


def _study(a, name: str, gpu: str | None, **over) -> Study:
    env = {} if gpu is None else {"CUDA_VISIBLE_DEVICES": gpu}
    return Study(study_args(a, runs=str(Path(a.runs) / name), env=env, **over), runner=runner)


def _failed(errors: dict, name: str, e: Exception) -> None:
    errors[name] = f"{type(e).__name__}: {e}" if not isinstance(e, StudyError) else str(e)
    print(f"{name}: {errors[name]}", flush=True)


def train_slot(a, queue, gpu: str | None, errors: dict) -> None:
    """One training slot's runs in turn. A failed run is recorded in `errors`."""
    for arm, length, seed in queue:
        name = run_name(arm, length, seed, a.base_seed)
        try:
            _study(a, name, gpu).extend([arm], [length], [seed], [a.base_seed])
        except Exception as e:  # noqa: BLE001 - one run's failure must not end the others
            _failed(errors, name, e)


def eval_jobs(runs: list[tuple[str, str, int]]) -> list[tuple[str, str, int, float]]:
    """(arm, length, seed, pruned fraction) in the order they run: every model unpruned
    first (the headline comparison), then the L2A models pruned, the larger fraction first."""
    jobs = [(*r, 0.0) for r in runs]
    for fraction in sorted(study.PRUNE_FRACTIONS, reverse=True):
        jobs += [(*r, fraction) for r in runs if r[0] != "dense"]
    return jobs


RECORD_LOCK = threading.Lock()  # a run's record gets results from several workers


def record_eval(path: Path, fraction: float, result: dict) -> None:
    with RECORD_LOCK:
        rec = read_json(path)
        if rec is not None:
            rec["evals"][str(fraction)] = result
            write_json(path, rec)


def eval_worker(a, jobs: queue.Queue, gpu: str | None, errors: dict) -> None:
    """Evaluation jobs off the shared queue until it is empty: one process at a time on `gpu`.
    Each result goes into its run's record (read, updated, written under RECORD_LOCK)."""
    while True:
        try:
            arm, length, seed, fraction = jobs.get_nowait()
        except queue.Empty:
            return
        name = run_name(arm, length, seed, a.base_seed)
        s = _study(a, name, gpu, reserve_s=0.0)
        path = s.run_path(arm, length, seed, a.base_seed)
        try:
            rec = read_json(path)
            if rec is None:  # not trained (its failure is in errors already)
                continue
            result = s.evaluate_run(rec) if fraction == 0.0 else s.prune_and_evaluate(rec, fraction)
            record_eval(path, fraction, result)
            print(f"eval {name} pruned {fraction}: "
                  f"{result.get('retrieval') or result.get('skipped') or result.get('failed')}",
                  flush=True)
        except Exception as e:  # noqa: BLE001 - one job's failure must not end the others
            _failed(errors, f"{name} pruned {fraction}", e)


def gpu_list(value: str | None) -> list[str]:
    """--gpus, else the visible GPUs as CUDA_VISIBLE_DEVICES names them (a child's own
    CUDA_VISIBLE_DEVICES replaces the parent's, so indices must be the parent's names)."""
    if value is not None:
        return _list(value)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return _list(visible)
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def arms(a) -> int:
    archives = Study(study_args(a))
    for length in _list(a.lengths, LENGTHS):  # once, before the runs start: no races
        archives.unpack_data(archives.seq_len(length))
    study.ensure_base(archives.base_dir_of(a.base_seed))
    gpus = gpu_list(a.gpus)
    slots = plan(_list(a.arms, ARMS), _list(a.lengths, LENGTHS),
                 [int(x) for x in _list(a.seeds)], gpus, a.per_gpu)
    errors: dict[str, str] = {}
    study.import_for_threads()  # before any thread: imports inside threads can race
    # Training: --per-gpu runs at once on each GPU; they end by the deadline less the reserve.
    threads = [threading.Thread(target=train_slot, args=(a, q, gpu, errors), daemon=True)
               for gpu, q in slots]
    for t in threads:
        t.start()
    for t in threads:
        t.join(until_deadline(a, PACK_MARGIN_S))
    # Then evaluation and pruning, --eval-per-gpu processes per GPU (one: a small model's
    # generation is launch-bound, and processes sharing a GPU slow each other down).
    jobs: queue.Queue = queue.Queue()
    for job in eval_jobs([r for _, q in slots for r in q]):
        jobs.put(job)
    if not any(t.is_alive() for t in threads):
        threads = [threading.Thread(target=eval_worker, args=(a, jobs, gpu, errors), daemon=True)
                   for gpu in (gpus or [None]) for _ in range(a.eval_per_gpu)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(until_deadline(a, PACK_MARGIN_S))
    late = sum(t.is_alive() for t in threads)
    kill_live()
    settle = time.time() + max(2.0, until_deadline(a, PACK_MARGIN_S / 2) or 0.0)
    for t in threads:  # a slot whose step was just killed records it
        t.join(max(0.0, settle - time.time()))
    while not jobs.empty():  # never started: said so in the record
        arm, length, seed, fraction = jobs.get_nowait()
        record_eval(archives.run_path(arm, length, seed, a.base_seed), fraction,
                    {"skipped": "no time left before the deadline"})
    if late:
        print(f"deadline: {late} slot(s) still running were stopped", flush=True)
    planned = [run_name(*r, a.base_seed) for _, q in slots for r in q]
    summary = summarize(Path(a.results), planned, errors)
    write_json(Path(a.results) / ARMS_SUMMARY, summary)
    tar = pack(Path(a.out) / TAR_NAME, Path(a.results), Path(a.runs),
               archives.base_dir_of(a.base_seed))
    kill_live()  # a late slot's step started while packing
    print_summary(summary)
    print(f"packed {tar} ({tar.stat().st_size / 2**20:.2f} MiB)", flush=True)
    return 0


def until_deadline(a, margin: float) -> float | None:
    """Seconds a thread may still be waited for: to the deadline less `margin` (None: no
    deadline, wait for it to end)."""
    return None if a.deadline is None else max(0.0, a.deadline - margin - time.time())


def kill_live() -> None:
    """Past the deadline: whatever still runs goes (its slot records the failure)."""
    for proc in list(LIVE):
        proc.kill()


def summarize(results: Path, planned: list[str], errors: dict) -> dict:
    """Per planned run (by its name, study.steps.run_name): steps, tokens/s, final loss,
    completed, and the evaluations' mean retrieval per length (or why there is none)."""
    out = {}
    for name in planned:
        rec = read_json(results / f"run-{name}.json")
        if rec is None:
            out[name] = {"completed": False,
                         "error": errors.get(name, "no record (stopped at the deadline)")}
            continue
        t = rec["train"]
        row = {k: t.get(k) for k in ("steps", "tokens", "tokens_per_s", "final_lm_loss",
                                     "sparsity", "completed", "wall_s")}
        row["evals"] = {frac: ev.get("retrieval") or ev.get("skipped") or ev.get("failed")
                        for frac, ev in sorted(rec.get("evals", {}).items())}
        if name in errors:
            row["error"] = errors[name]
        out[name] = row
    return {"runs": out}


def print_summary(summary: dict) -> None:
    for name, r in summary["runs"].items():
        if "steps" not in r:
            print(f"{name}: not trained: {r['error']}", flush=True)
            continue
        loss = "-" if r["final_lm_loss"] is None else f"{r['final_lm_loss']:.4f}"
        line = (f"{name}: {r['steps']} steps ({'completed' if r['completed'] else 'stopped'}), "
                f"{r['tokens_per_s'] or 0:,} tokens/s, lm loss {loss}, "
                f"sparsity {r['sparsity'] or 0:.3f}")
        for frac, ev in r["evals"].items():
            shown = (" ".join(f"{n}:{v:.2f}" for n, v in sorted(ev.items(), key=lambda x: int(x[0])))
                     if isinstance(ev, dict) else ev)
            line += f" | pruned {frac}: {shown}"
        print(line + (f" | error: {r['error']}" if "error" in r else ""), flush=True)


# What the archive takes of each run directory: its record, metrics, logs, the evaluations'
# and the pruning's reports (no weights, no checkpoints: pruned-*/ holds a model).
PACKED_FROM_RUNS = ("logs/*.log", "*/summary.json", "*/metrics.jsonl", "*/*.log",
                    "*/eval*/*.json", "*/pruned-*/prune_report.json")


def pack(tar_path: Path, results: Path, runs: Path, base_dir: Path) -> Path:
    """results/ (the run records, the pretraining's from the base's bundle) and runs/ (per
    run directory: PACKED_FROM_RUNS) as one .tar.gz; the logs left out if it would pass
    MAX_TAR_BYTES."""
    members = {p.name: p for p in sorted((base_dir / "study-results").glob("*.json"))}
    members.update({p.name: p for p in sorted(results.glob("*.json"))})
    listed = [(p, f"results/{n}") for n, p in sorted(members.items())]
    listed += [(p, f"results/samples/{p.name}")
               for p in record_files(records_dir(results))]
    for run in sorted(d for d in runs.iterdir() if d.is_dir() and d != results):
        found = {p for pattern in PACKED_FROM_RUNS for p in run.glob(pattern)}
        listed += [(p, f"runs/{run.name}/{p.relative_to(run)}") for p in sorted(found)
                   if p.is_file() and p.stat().st_size <= MAX_PACKED_FILE]
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tar_path.with_name(tar_path.name + ".tmp")
    for keep_logs in (True, False):
        with tarfile.open(tmp, "w:gz") as tar:
            for src, name in listed:
                if keep_logs or not name.endswith(".log"):
                    tar.add(src, arcname=name)
        if tmp.stat().st_size <= MAX_TAR_BYTES:
            break
    os.replace(tmp, tar_path)
    return tar_path


def pretrain(a) -> int:
    """`python -m study pretrain` with the deadline; the record and log go into base-files.tar."""
    gpus = gpu_list(a.gpus)
    s = Study(study_args(a, data_unpacked=False,
                         env={"CUDA_VISIBLE_DEVICES": gpus[0]} if gpus else {}), runner=runner)
    rec = s.pretrain(a.seed)
    base = s.base_dir_of(a.seed)
    bundle = base / study.BASE_BUNDLE
    run_dir = Path(rec["run_dir"])
    extra = [(Path(a.results) / f"pretrain-seed{a.seed}.json", f"study-results/pretrain-seed{a.seed}.json"),
             (Path(a.runs) / "logs" / f"pretrain-seed{a.seed}.log", f"study-logs/pretrain-seed{a.seed}.log"),
             (run_dir / "metrics.jsonl", f"study-logs/pretrain-seed{a.seed}.metrics.jsonl")]
    with tarfile.open(bundle, "a") as tar:
        for src, name in extra:
            if src.exists():
                tar.add(src, arcname=name)
    files = sorted(p.name for p in base.iterdir())
    print(f"pretrain: {rec['steps']} steps ({'completed' if rec['completed'] else 'stopped by time'}), "
          f"{rec['tokens_per_s'] or 0:,} tokens/s, lm loss {rec['final_lm_loss']}; "
          f"{base}: {len(files)} files, "
          f"{sum((base / f).stat().st_size for f in files) / 2**20:.1f} MiB", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["pretrain", "arms"])
    p.add_argument("--out", default=None,
                   help="the results folder (scripts/study_gpu.sh: RESULTS_DIR or gpu_results/...)")
    p.add_argument("--scale", choices=["full", "tiny"], default="full")
    p.add_argument("--data-archives", default=str(ROOT / ".cache" / "study" / "data"))
    p.add_argument("--base-dir", default=None, help="pretrain: <out>/base; arms: .cache/study/base")
    p.add_argument("--runs", default=None, help="run directories (default: a temporary folder)")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--lengths", default="16k")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="arms: extension seeds")
    p.add_argument("--seed", type=int, default=0,
                   help="pretrain: the base's seed (seed b > 0 lands in <base-dir>-seed<b>)")
    p.add_argument("--base-seed", type=int, default=0,
                   help="arms: extend the base of this seed (b > 0: <base-dir>-seed<b>)")
    p.add_argument("--gpus", default=None, help="e.g. 0,1 (default: every visible GPU)")
    p.add_argument("--per-gpu", type=int, default=4, help="runs at once on each GPU")
    p.add_argument("--eval-per-gpu", type=int, default=1,
                   help="evaluation / pruning processes at once on each GPU, after training")
    p.add_argument("--max-steps", type=int, default=None,
                   help="train.max_steps of every run (the LR schedule follows it)")
    p.add_argument("--max-minutes", type=float, default=None, help="cap of one training run")
    p.add_argument("--deadline-minutes", type=float, default=None,
                   help="everything ends, the results written, this long after --started-at "
                   "(your scheduler's time limit less a margin; default: no deadline)")
    p.add_argument("--reserve-minutes", type=float, default=None,
                   help="under a deadline, left after training (arms: evaluation, pruning; "
                   "default 3; pretrain: 1)")
    p.add_argument("--started-at", type=float, default=None,
                   help="the job's start, epoch seconds: the deadline counts from it "
                   "(default: now)")
    a = p.parse_args(argv)
    if not a.out:
        print("error: --out: give the results folder", file=sys.stderr)
        return 2
    a.out = Path(a.out).resolve()
    a.deadline = (None if a.deadline_minutes is None
                  else (a.started_at or time.time()) + a.deadline_minutes * 60)
    if a.reserve_minutes is None:
        a.reserve_minutes = 3.0 if a.mode == "arms" else 1.0
    a.base_dir = Path(a.base_dir or (a.out / "base" if a.mode == "pretrain"
                                     else ROOT / ".cache" / "study" / "base")).resolve()
    a.runs = Path(a.runs or ROOT / "runs" / "study-gpu-host").resolve()
    a.results = a.runs / "results"
    if a.results.exists():  # a rerun in the same folder: only this run's records are packed
        shutil.rmtree(a.results)
    try:
        return pretrain(a) if a.mode == "pretrain" else arms(a)
    except StudyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
