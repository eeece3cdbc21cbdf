"""The dense vs L2A context-extension study (study/RESULTS.md), one subcommand per step:

    python -m study prepare    # data at 2K, 8K, 16K + the held-out files
    python -m study pretrain   # the bases (--base-seeds), dense, all parameters, 2K
    python -m study extend     # arms x lengths x seeds x base seeds from those bases
    python -m study eval       # python -m eval on every extended model (+ per-sample records)
    python -m study prune      # python -m train.prune on the L2A models, then eval again
    python -m study report     # study/results/*.json -> study/RESULTS.md + plots
    python -m study derive-samples --results study/results/<run>   # per-sample records
                                     # of an older run, from its logs/eval-results-*.json
    python -m study pack-data  # the prepared rows as .cache/study/data/*.tar.xz, for a
                                     # machine without `datasets` (--data-archives there)

Every step runs the project's own entry points as subprocesses (`python -m train`,
`python -m train.data.prepare`, `python -m eval`, `python -m train.prune`); the last two are
behind one small function each (`eval_command`, `prune_command`, `parse_*`) so that they
follow those CLIs. A step whose tool is not installed is recorded as skipped with the
reason. `--scale tiny` runs the same chain on a tiny model and short rows on CPU (the
smoke test). Results: one JSON per run under `--results` (default study/results); the
evaluations' per-sample records (study/samples.py) beside them in `<results>/samples/`
(`--samples-dir` elsewhere).

Sizes (the defaults; study/RESULTS.md "How the answer is computed"): per model, task and
evaluation length 20 generated samples (5 tasks: 100 per length, so one sample moves a
model's mean at a length by 0.01) and 100 teacher-forced ones (the 20 generated among
them); extension seeds 0, 1, 2 of every arm and length; base seeds 0 and 1, each base
pretrained on its own, every arm extended from both. `--samples`, `--teacher-forced-samples`,
`--seeds`, `--base-seeds` change them (`--scale tiny`: 1 and 2 samples).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from study.design import (
    BASE_SEEDS,
    EVAL_SAMPLES,
    RETRIEVAL_TASKS,
    SEEDS,
    TEACHER_FORCED_SAMPLES,
    trained_seq_len,
)

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"dense": "study_dense", "l2a": "study_l2a", "l2a_s08": "study_l2a_s08",
        "l2a_s09": "study_l2a_s09"}
LENGTHS = {"8k": 8192, "16k": 16384}
EVAL_LENGTHS = [2048, 8192, 16384, 32768]  # 32768: beyond both trained lengths
# The needle at depth 0.5; at most 48 new tokens (the longest answer, four 7-digit values,
# is 37 byte tokens; RULER's 128 are BPE tokens); perplexity on 8 held-out rows per length.
EVAL_EXTRA = ["eval.depths=[0.5]", "eval.max_new_tokens=48", "eval.perplexity.rows=8"]
PRUNE_FRACTIONS = [0.25, 0.5]
# The base as small safetensors shards (the 46 MiB base in 4): a base pretrained on one host
# is copied to the hosts of the extension runs as a few small files.
MAX_SHARD_BYTES = 12 << 20
# The base probe takes seconds on a GPU (64 forwards of <= 2K tokens); the cap keeps a hung
# probe from taking a deadline's time from the steps after it.
PROBE_CAP_S = 120.0
# Under a deadline (study.gpu_host): a training run needs at least MIN_TRAIN_S to be
# worth starting, an evaluation or pruning MIN_STEP_S; a step stopped at the deadline gets
# SIGTERM and is killed STOP_GRACE_S later (run_step's grace under a deadline).
MIN_TRAIN_S, MIN_STEP_S, STOP_GRACE_S = 30.0, 10.0, 10.0
# No progress bar, wandb or per-run plot (a GPU host may lack matplotlib; `report` plots).
QUIET = ["train.progress_bar=false", "train.wandb.mode=disabled", "train.plot=false"]
# --scale tiny: the same chain on CPU in about a minute (tiny model, 512-token rows).
TINY = {
    "pretrain": ["model=tiny", "data=study_tiny", "train.max_steps=4", "train.micro_batch_size=4",
                 "train.global_batch_size=4", "train.ckpt_every=0", "train.plot=false"],
    # The data of study_tiny as is (the length group's keys set back): one prepared set.
    "extend": ["data=study_tiny", "data.seq_len=512", "data.num_tokens=120000",
               "data.synthetic.num_samples=60", "data.synthetic.min_tokens=256",
               "train.max_steps=3", "train.micro_batch_size=2", "train.global_batch_size=2",
               "l2a.window=32", "l2a.lambda_final=2.0e-5", "train.plot=false"],
    "prepare": ["data=study_tiny"],
    "eval_lengths": [512, 1024],
    "samples": (1, 2),  # generated, teacher-forced per task and length
    "eval": ["eval.tasks=[niah_single]", "eval.depths=[0.5]", "eval.max_new_tokens=12",
             "eval.perplexity.buckets=2"],
    "probe": ["--tasks", "passkey", "--lengths", "256", "--samples", "2"],
}


# A step is one process of its own: the parent's process-group variables (set by an
# in-process trainer, or a launcher) are not passed on.
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
             "MASTER_PORT")


class StudyError(RuntimeError):
    """A step failed; the message is one line naming the step and its log."""


# ----------------------------------------------------------------------------- helpers
def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_json(path: Path, default=None):
    return json.loads(path.read_text()) if path.exists() else default


# The steps running now (several at once under study.gpu_host): what a deadline kills.
LIVE: set[subprocess.Popen] = set()


def run_step(argv: list[str], log: Path, max_seconds: float | None = None,
             env: dict | None = None, grace: float = 120.0) -> tuple[int, float]:
    """Run one command with its output in `log`. Past `max_seconds` it gets SIGTERM (the
    trainer then checkpoints and exits 75), then SIGKILL `grace` s later. -> (exit code, wall s)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log, "w") as out:
        child_env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**child_env, **(env or {})})
        LIVE.add(proc)
        try:
            rc = proc.wait(timeout=max_seconds)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
        finally:
            LIVE.discard(proc)
    return rc, time.time() - t0


def run_in_process(argv: list[str], log: Path, max_seconds: float | None = None,
                   env: dict | None = None) -> tuple[int, float]:
    """`run_step` without a new interpreter per step (the CPU smoke test: start-up would
    cost more than the steps). Runs `python -m train | study.train_prepared |
    train.data.prepare | train.export` in this process (`max_seconds` not enforced), any
    other module through `run_step`."""
    module, args = argv[2], argv[3:]
    if module not in ("train", "study.train_prepared", "train.data.prepare", "train.export"):
        return run_step(argv, log, max_seconds, env)  # eval, pruning: their own process
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    t0 = time.time()
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            if module == "train":
                from train.config import from_hydra
                from train.data.prepare import compose
                from train.trainer import run

                run_dir = next(a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir="))
                overrides = [a for a in args if not a.startswith("hydra.")]
                rc = run(from_hydra(compose("config", overrides)), run_dir, overrides)
            elif module == "study.train_prepared":
                from study.train_prepared import main as study_train_main

                rc = study_train_main(args)
            elif module == "train.data.prepare":
                from train.data.prepare import main as prepare_main

                rc = prepare_main(args)
            else:
                from train.export import main as export_main

                rc = export_main(args)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return rc, time.time() - t0


def _tail(log: Path, n: int = 1) -> str:
    lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()] if log.exists() else []
    return " | ".join(lines[-n:]) or "no output"


def tool_missing(module: str) -> str | None:
    """Why `python -m <module>` cannot run here, or None."""
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    return None if found else f"python -m {module} is not available in this checkout"


# ----------------------------------------------------------------------------- adapters
# The two tools the study drives from outside, `python -m eval` (docs/EVAL.md) and
# `python -m train.prune`: these functions are the only places that know their CLIs.

def eval_command(model_dir: Path, out_dir: Path, lengths: list[int], heldout: Path | None,
                 heldout_len: int, seed: int = 0, extra: list[str] | None = None,
                 samples: tuple[int, int] = (EVAL_SAMPLES, TEACHER_FORCED_SAMPLES)) -> list[str]:
    """`python -m eval`: the retrieval tasks at `lengths`, `samples` = (generated,
    teacher-forced) per task, length and depth; perplexity on the held-out rows at the
    lengths they are long enough for; routing (L2A) on the same rows."""
    generated, forced = samples
    argv = [sys.executable, "-m", "eval", f"model.path={model_dir}",
            f"eval.lengths=[{','.join(map(str, lengths))}]", f"eval.seed={seed}",
            f"eval.tasks=[{','.join(RETRIEVAL_TASKS)}]", "eval.plots=false",
            f"eval.samples={generated}", "eval.teacher_forced.enabled=true",
            f"eval.teacher_forced.samples={forced}", f"hydra.run.dir={out_dir}"]
    ppl = [n for n in lengths if n <= heldout_len]
    if heldout is not None and ppl:
        argv += [f"eval.perplexity.data={heldout}",
                 f"eval.perplexity.lengths=[{','.join(map(str, ppl))}]"]
    else:
        argv.append("eval.perplexity.data=null")
    return argv + list(extra or [])


def parse_eval(out_dir: Path) -> dict:
    """results.json -> {"retrieval": {length: mean score over the tasks}, "perplexity":
    {length: ppl}, "layer_sparsity": per layer on held-out rows at the longest length
    (L2A), "kv_bytes": {}} (study.steps fills kv_bytes from the model's config)."""
    raw = json.loads((out_dir / "results.json").read_text())
    scores: dict[str, list[float]] = {}
    for c in raw.get("tasks", []):
        if c["depth"] in (None, "all"):  # "all": a NIAH task's mean over depths
            scores.setdefault(str(c["length"]), []).append(float(c["score"]))
    heldout = sorted(raw.get("routing", {}).get("heldout", []), key=lambda r: r["length"])
    return {
        "retrieval": {k: sum(v) / len(v) for k, v in scores.items()},
        "perplexity": {str(p["length"]): p["ppl"] for p in raw.get("perplexity", [])
                       if p.get("ppl") is not None},
        "layer_sparsity": heldout[-1]["layer_sparsity"] if heldout else None,
        "kv_bytes": {},
    }


def import_for_threads() -> None:
    """Import, in the calling thread, what the in-process parts of the steps import (`kv_bytes`;
    `tool_missing("train.prune")`, which imports `l2a`). Call it before starting threads that run
    steps: transformers' lazy top-level module is not thread-safe, and two threads importing
    `AutoConfig` at once can get "cannot import name 'AutoConfig' from 'transformers'"."""
    from transformers import AutoConfig  # noqa: F401

    import l2a  # noqa: F401
    import l2a.cache  # noqa: F401


_EVAL_LINE = re.compile(r"^\[\d+/\d+\] (\w+) length (\d+)(?: depth ([\d.]+))?: score ([\d.]+)")
_PPL_LINE = re.compile(r"^perplexity at length (\d+): loss ([\d.]+)")


def parse_eval_log(log: Path) -> dict:
    """What an evaluation had measured before it was stopped (results.json is written at the
    end), from its log: {"samples": [{task, length, depth, score}] of the lines
    "[i/N] <task> length <L> [depth <d>]: score <s> (...)", "perplexity": {length: ppl} of
    "perplexity at length <L>: loss <x>"}."""
    import math

    samples, ppl = [], {}
    for line in (log.read_text(errors="replace").splitlines() if log.exists() else []):
        if m := _EVAL_LINE.match(line):
            samples.append({"task": m[1], "length": int(m[2]),
                            "depth": None if m[3] is None else float(m[3]), "score": float(m[4])})
        elif m := _PPL_LINE.match(line):
            ppl[m[1]] = math.exp(float(m[2]))
    return {"samples": samples, "perplexity": ppl}


def kv_bytes(model_dir: Path, lengths: list[int], itemsize: int = 2) -> dict[str, int]:
    """KV cache bytes of one sequence per length (bf16): the L2A cache's (l2a.cache) or,
    for a dense model, keys and values of every layer for every token."""
    from transformers import AutoConfig

    import l2a  # noqa: F401
    from l2a.cache import kv_cache_bytes

    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type.startswith("l2a"):
        return {str(n): kv_cache_bytes(config, n, itemsize) for n in lengths}
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_token = 2 * config.num_key_value_heads * head_dim * itemsize * config.num_hidden_layers
    return {str(n): n * per_token for n in lengths}


def prune_command(model_dir: Path, out_dir: Path, fraction: float, calibration: Path,
                  context: int) -> list[str]:
    """`python -m train.prune`: measure global usage per layer on the held-out rows, keep the
    most used (1 - fraction) of the global branches, report KV bytes at `context` tokens."""
    return [sys.executable, "-m", "train.prune", "--model", str(model_dir), "--out", str(out_dir),
            "--data", str(calibration), "--keep-fraction", f"{1 - fraction:g}",
            "--context", str(context), "--overwrite"]


def parse_prune(out_dir: Path) -> dict:
    """The pruning report: layers pruned, usage per layer, KV bytes before and after."""
    path = out_dir / "prune_report.json"
    return read_json(path, {})


# ----------------------------------------------------------------------------- steps
class Study:
    def __init__(self, args, runner=run_step):
        self.runner = runner
        self.scale = args.scale
        self.runs = Path(args.runs).resolve()
        self.results = Path(args.results).resolve()
        self.base_dir = Path(args.base_dir).resolve()
        # Per-sample records (study/samples.py): beside the run records, where `report`
        # looks for them, unless told otherwise.
        from study.samples import records_dir

        self.samples_dir = Path(getattr(args, "samples_dir", None)
                                or records_dir(self.results)).resolve()
        tiny = TINY["samples"] if args.scale == "tiny" else (EVAL_SAMPLES, TEACHER_FORCED_SAMPLES)
        self.samples = (getattr(args, "samples", None) or tiny[0],
                        getattr(args, "teacher_forced_samples", None) or tiny[1])
        if self.samples[1] < self.samples[0]:
            raise StudyError(f"--teacher-forced-samples {self.samples[1]}: below --samples "
                             f"{self.samples[0]} (every generated sample is teacher-forced too)")
        self.max_seconds = args.max_minutes * 60 if args.max_minutes else None
        self.archives = Path(args.data_archives).resolve() if args.data_archives else None
        self.env = {"L2A_STUDY_BASE": str(self.base_dir), "WANDB_MODE": "disabled",
                    "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
        # Set by study.gpu_host (not on the command line): the data unpacked once before
        # concurrent runs, one GPU per Study, extra training overrides (train.max_steps=...),
        # and a wall-clock deadline (epoch s) by which every step has ended; a training run
        # stops `reserve_s` before it, leaving that time to its evaluation and pruning.
        self.unpacked = getattr(args, "data_unpacked", False)
        self.env.update(getattr(args, "env", None) or {})
        self.train_overrides = list(getattr(args, "train_overrides", None) or [])
        self.deadline = getattr(args, "deadline", None)
        self.reserve_s = getattr(args, "reserve_s", 0.0)

    def extra(self, step: str) -> list[str]:
        if self.scale == "tiny":
            return TINY[step]
        return EVAL_EXTRA if step == "eval" else []

    def eval_lengths(self) -> list[int]:
        return TINY["eval_lengths"] if self.scale == "tiny" else EVAL_LENGTHS

    def base_dir_of(self, base_seed: int) -> Path:
        """Base seed 0 is --base-dir itself (where the earlier runs' base is); seed b a
        directory beside it, <base-dir>-seed<b>."""
        return self.base_dir if base_seed == 0 else self.base_dir.with_name(
            f"{self.base_dir.name}-seed{base_seed}")

    def seq_len(self, length: str | None) -> int:
        return 512 if self.scale == "tiny" else LENGTHS.get(length, 2048)

    def seq_len_of(self, rec: dict) -> int:
        return trained_seq_len(rec)

    def prepare_overrides(self, length: str | None) -> list[list[str]]:
        """The data sets of the study: training rows per length and the held-out files."""
        base = self.step_overrides(length)
        held = [*base, "data.sources.0.split=validation", "data.synthetic.enabled=false",
                "data.num_tokens=null",
                f"data.prepared_dir={self.heldout_dir(self.seq_len(length))}"]
        if self.scale != "tiny":
            held.append("data.sources.1.split=validation")
        return [base, held]

    def heldout_dir(self, seq_len: int) -> Path:
        return data_root() / "prepared" / f"heldout-{seq_len}"

    def step_overrides(self, length: str | None) -> list[str]:
        if length is None:
            return ["experiment=study_base", *self.extra("pretrain")]
        return ["experiment=study_l2a", f"study_length={length}", *self.extra("extend")]

    def pack_data(self, lengths: list[str | None]) -> list[Path]:
        """The prepared rows (and held-out files) of each length as one .tar.xz under
        --data-archives (default .cache/study/data): what a machine without `datasets`
        trains from. Packed once (xz preset 6: the 2K rows, 161 MB of uint16 tokens, and their
        held-out rows become 15.3 MiB)."""
        import tarfile

        from train.config import from_hydra
        from train.data.prepare import compose

        out_dir = self.archives or (ROOT / ".cache" / "study" / "data")
        made = []
        for length in lengths:
            cfg = from_hydra(compose("config", self.step_overrides(length)))
            dirs = [Path(cfg.data.prepared_dir).resolve(), self.heldout_dir(cfg.data.seq_len)]
            missing = [d for d in dirs if not (d / "meta.json").exists()]
            if missing:
                raise StudyError(f"{missing[0]}: not prepared; run `python -m study prepare`")
            out = out_dir / f"study-{cfg.data.seq_len}.tar.xz"
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".tmp")
            with tarfile.open(tmp, "w:xz", preset=6) as tar:
                for d in dirs:
                    tar.add(d, arcname=f"prepared/{d.name}")
            os.replace(tmp, out)
            made.append(out)
            print(f"pack-data: {out} ({out.stat().st_size / 2**20:.1f} MiB)", flush=True)
        return made

    def unpack_data(self, seq_len: int) -> None:
        """Unpack study-<seq_len>.tar.xz from --data-archives into the data directory."""
        import tarfile

        archive = self.archives / f"study-{seq_len}.tar.xz"
        if not archive.exists():
            raise StudyError(f"{archive}: no such archive (python -m study pack-data)")
        # Into a private directory, then each data set renamed into place unless there:
        # two processes (one per GPU) may unpack the same archive at once.
        tmp = data_root() / f".unpack-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        for d in sorted((tmp / "prepared").iterdir()):
            target = data_root() / "prepared" / d.name
            meta = target / "meta.json"
            if target.exists() and (not meta.exists()
                                    or meta.read_bytes() != (d / "meta.json").read_bytes()):
                with contextlib.suppress(OSError):  # the other process moved it first
                    os.rename(target, target.with_name(f".stale-{target.name}-{os.getpid()}"))
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.rename(d, target)  # atomic: a data set is there whole or not at all
                except OSError:  # the other process renamed its copy first
                    pass
        shutil.rmtree(tmp, ignore_errors=True)

    def train_module(self, seq_len: int) -> str:
        if self.archives is None:
            return "train"
        if not self.unpacked:
            self.unpack_data(seq_len)
        return "study.train_prepared"

    def time_left(self, reserve: float = 0.0) -> float | None:
        """Seconds until the deadline less `reserve` (None: no deadline)."""
        return None if self.deadline is None else self.deadline - reserve - time.time()

    def prepare(self, lengths: list[str | None]) -> None:
        for length in lengths:
            for overrides in self.prepare_overrides(length):
                tag = "2k" if length is None else length
                log = self.runs / "logs" / f"prepare-{tag}-{len(overrides)}.log"
                rc, _ = self.runner([sys.executable, "-m", "train.data.prepare", *overrides], log,
                                 env=self.env)
                if rc != 0:
                    raise StudyError(f"prepare {tag}: exit {rc}: {_tail(log)} (log {log})")
                print(f"prepare {tag}: ok ({log})", flush=True)
        write_json(self.results / "corpus.json", corpus_manifest(self.extra("pretrain")))


    def _train(self, name: str, overrides: list[str], seq_len: int, base_seed: int = 0) -> dict:
        run_dir = self.runs / name
        log = self.runs / "logs" / f"{name}.log"
        argv = [sys.executable, "-m", self.train_module(seq_len), *overrides,
                *self.train_overrides, *QUIET, f"hydra.run.dir={run_dir}"]
        cap = self.max_seconds
        left = self.time_left(self.reserve_s)
        if left is not None:
            if left < MIN_TRAIN_S:
                raise StudyError(f"{name}: not started, {max(left, 0):.0f} s left before the "
                                 "deadline less the reserve for evaluation")
            cap = left if cap is None else min(cap, left)
        env = {**self.env, "L2A_STUDY_BASE": str(self.base_dir_of(base_seed))}
        rc, wall = self.runner(argv, log, cap, env)
        if rc == 75:  # stopped at --max-minutes: export what the last checkpoint holds
            rc2, _ = self.runner([sys.executable, "-m", "train.export", str(run_dir),
                                  str(run_dir / "export")], log.with_suffix(".export.log"),
                                 None, env)
            if rc2 != 0:
                raise StudyError(f"{name}: export after the time cap failed ({log})")
        elif rc != 0:
            raise StudyError(f"{name}: exit {rc}: {_tail(log)} (log {log})")
        summary = read_json(run_dir / "summary.json", {})
        metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()
                   if x.strip()]
        last = metrics[-1] if metrics else {}
        train_s = sum(m.get("step_time_s", 0.0) for m in metrics)
        world = summary.get("world_size", 1)
        return {
            "run_dir": str(run_dir), "completed": rc == 0, "wall_s": round(wall, 1),
            "steps": last.get("step", 0), "tokens": last.get("tokens", 0),
            "gpu_time_s": round(train_s * world, 1), "final_lm_loss": last.get("lm_loss"),
            "tokens_per_s": round(last.get("tokens", 0) / train_s) if train_s else None,
            "sparsity": last.get("sparsity", 0.0),
            "layer_sparsity": [last[k] for k in sorted(
                (k for k in last if k.startswith("sparsity/layer_")),
                key=lambda k: int(k.rsplit("_", 1)[1]))],
            "export_dir": str(run_dir / "export"),
        }

    def pretrain(self, seed: int) -> dict:
        name = f"pretrain-seed{seed}"
        rec = self._train(name, [*self.step_overrides(None), f"train.seed={seed}"],
                          self.seq_len(None))
        base = self.base_dir_of(seed)
        rec["base_files"] = save_sharded(Path(rec["export_dir"]), base)
        rec["probe"] = self.probe_base(name, Path(rec["export_dir"]))
        write_json(self.results / f"{name}.json", {"step": "pretrain", "seed": seed,
                                                    "scale": self.scale, "train": rec})
        print(f"{name}: {rec['steps']} steps, lm loss {rec['final_lm_loss']}, "
              f"{rec['gpu_time_s']} GPU s; base {base} ({len(rec['base_files'])} files)")
        return rec

    def probe_base(self, name: str, model_dir: Path) -> dict:
        """study.probe on the base (has it learned to copy a value from its context?),
        on the GPU it trained on; a failure is recorded, not raised (the base is saved)."""
        out = self.runs / f"{name}-probe.json"
        log = self.runs / "logs" / f"{name}-probe.log"
        rc, _ = self.runner([sys.executable, "-m", "study.probe", str(model_dir),
                             "--out", str(out), *self.extra("probe")], log, PROBE_CAP_S, self.env)
        if rc != 0 or not out.exists():
            return {"failed": f"exit {rc}: {_tail(log)}"}
        res = read_json(out, {})
        for r in res.get("rows", []):
            print(f"probe {name}: {r['task']} at {r['length']}: answer nll {r['nll']:.3f}, "
                  f"token accuracy {r['token_accuracy']:.2f}, exact {r['exact']:.2f}", flush=True)
        return res

    def run_path(self, arm: str, length: str, seed: int, base_seed: int = 0) -> Path:
        return self.results / f"run-{run_name(arm, length, seed, base_seed)}.json"

    def extend(self, arms: list[str], lengths: list[str], seeds: list[int],
               base_seeds: list[int] = (0,)) -> None:
        for b in base_seeds:
            base = self.base_dir_of(b)
            ensure_base(base)
            if not (base / "config.json").exists():
                raise StudyError(f"{base}: no base model of base seed {b}; run `python -m study "
                                 f"pretrain --base-seeds {b}` or pass --base-dir")
        for b in base_seeds:
            for arm in arms:
                for length in lengths:
                    for seed in seeds:
                        self._extend_one(arm, length, seed, b)

    def _extend_one(self, arm: str, length: str, seed: int, base_seed: int) -> None:
        name = run_name(arm, length, seed, base_seed)
        rec = self._train(name, [f"experiment={ARMS[arm]}", f"study_length={length}",
                                 f"train.seed={seed}", *self.extra("extend")],
                          self.seq_len(length), base_seed)
        write_json(self.run_path(arm, length, seed, base_seed), {
            "arm": arm, "train_length": LENGTHS[length], "seed": seed, "base_seed": base_seed,
            "scale": self.scale, "train": rec, "evals": {}})
        print(f"{name}: {rec['steps']} steps, lm loss {rec['final_lm_loss']}, "
              f"sparsity {rec['sparsity']:.3f}, {rec['gpu_time_s']} GPU s", flush=True)

    def _records(self, arms=None, lengths=None, seeds=None,
                 base_seeds=None) -> list[tuple[Path, dict]]:
        """The extension runs in --results, those of the given arms, lengths, seeds and base
        seeds only (a record without base_seed extends base seed 0)."""
        out = []
        for p in sorted(self.results.glob("run-*.json")):
            rec = json.loads(p.read_text())
            if ((arms is None or rec["arm"] in arms) and (seeds is None or rec["seed"] in seeds)
                    and (base_seeds is None or rec.get("base_seed", 0) in base_seeds)
                    and (lengths is None or rec["train_length"] in [LENGTHS[x] for x in lengths])):
                out.append((p, rec))
        return out

    def _evaluate(self, model_dir: Path, out_dir: Path, rec: dict, pruned: float) -> dict:
        """`python -m eval` of one model (a run's, or its pruned one): the parsed results,
        and its per-sample records written under --samples-dir."""
        seq_len, seed = self.seq_len_of(rec), rec["seed"]
        missing = tool_missing("eval")
        if missing:
            return {"skipped": missing}
        log = out_dir.with_name(out_dir.name + ".log")  # eval-pruned-0.25.log, not -0.log
        heldout = self.heldout_dir(seq_len)
        left = self.time_left(STOP_GRACE_S)
        if left is not None and left < MIN_STEP_S:
            return {"skipped": "no time left before the deadline"}
        rc, wall = self.runner(eval_command(model_dir, out_dir, self.eval_lengths(),
                                            heldout if heldout.exists() else None, seq_len,
                                            seed, self.extra("eval"), self.samples),
                               log, left, self.env)
        if rc != 0:
            why = " (stopped at the deadline)" if left is not None and wall >= left else ""
            return {"failed": f"exit {rc}{why}: {_tail(log)}", "log": str(log),
                    "partial": parse_eval_log(log)}
        result = parse_eval(out_dir)
        result["kv_bytes"] = kv_bytes(model_dir, self.eval_lengths())
        result["samples_file"] = str(self.write_samples(out_dir, rec, pruned))
        return {**result, "wall_s": round(wall, 1)}

    def write_samples(self, out_dir: Path, rec: dict, pruned: float) -> Path:
        from study.samples import file_name, records_from_results, write_records

        base_seed = rec.get("base_seed", 0)
        lines = records_from_results(json.loads((out_dir / "results.json").read_text()),
                                     arm=rec["arm"], train_length=rec["train_length"],
                                     base_seed=base_seed, seed=rec["seed"], pruned=pruned)
        return write_records(self.samples_dir / file_name(rec["arm"], rec["train_length"],
                                                          base_seed, rec["seed"], pruned), lines)

    def evaluate_run(self, rec: dict) -> dict:
        """`python -m eval` of one run's (unpruned) model."""
        return self._evaluate(Path(rec["train"]["export_dir"]), Path(rec["train"]["run_dir"]) / "eval",
                              rec, 0.0)

    def evaluate(self, **which) -> None:
        for path, rec in self._records(**which):
            result = self.evaluate_run(rec)
            rec["evals"]["0.0"] = result
            write_json(path, rec)
            print(f"eval {path.stem}: {sorted(result) if 'skipped' not in result else result['skipped']}")

    def prune(self, **which) -> None:
        for path, rec in self._records(**which):
            if rec["arm"] == "dense":
                continue
            for fraction in PRUNE_FRACTIONS:
                rec["evals"][str(fraction)] = self.prune_and_evaluate(rec, fraction)
            write_json(path, rec)
            print(f"prune {path.stem}: {sorted(rec['evals'])}")

    def prune_and_evaluate(self, rec: dict, fraction: float) -> dict:
        """`python -m train.prune` of one run's model at `fraction`, then its evaluation."""
        missing = tool_missing("train.prune")
        if missing:
            return {"skipped": missing}
        run_dir = Path(rec["train"]["run_dir"])
        out = run_dir / f"pruned-{fraction}"
        log = out.with_name(out.name + ".log")
        left = self.time_left(STOP_GRACE_S)
        if left is not None and left < MIN_STEP_S:
            return {"skipped": "no time left before the deadline"}
        rc, _ = self.runner(prune_command(Path(rec["train"]["export_dir"]), out, fraction,
                                          self.heldout_dir(self.seq_len_of(rec)),
                                          rec["train_length"]), log, left, self.env)
        if rc != 0:
            return {"failed": f"prune exit {rc}: {_tail(log)}"}
        result = self._evaluate(out, run_dir / f"eval-pruned-{fraction}", rec, fraction)
        result["prune"] = parse_prune(out)
        return result


def run_name(arm: str, length: str, seed: int, base_seed: int = 0) -> str:
    """A run's name: base seed 0 (the only base of the earlier runs) keeps the names those
    runs' records have; another base seed is in the name."""
    return f"{arm}-{length}-seed{seed}" if base_seed == 0 else f"{arm}-{length}-base{base_seed}-seed{seed}"


def data_root() -> Path:
    """Where the data configs put prepared data and caches (L2A_DATA_DIR, or .cache/data)."""
    return Path(os.environ.get("L2A_DATA_DIR", ROOT / ".cache" / "data")).resolve()


def corpus_manifest(overrides: list[str]) -> dict:
    """What the study's files sources select on this machine, both sides of the split."""
    import platform

    from train.config import from_hydra
    from train.data.file_corpus import select_files
    from train.data.prepare import compose

    cfg = from_hydra(compose("config", ["experiment=study_base", *overrides]))
    out = {"python": platform.python_version(), "sources": {}}
    for i, src in enumerate(cfg.data.sources):
        if src.type == "files":
            out["sources"][src.name] = {
                side: select_files(src.path, src.files, side, f"data.sources[{i}].path").manifest()
                for side in ("train", "validation")}
    return out


BASE_BUNDLE = "base-files.tar"  # config, tokenizer, shard index: one file instead of five


def save_sharded(src: Path, dst: Path, max_bytes: int = MAX_SHARD_BYTES) -> list[dict]:
    """Re-save an HF model directory as a base to copy between hosts: safetensors shards of
    at most `max_bytes`, plus the small files in one tar that `ensure_base` unpacks. Atomic;
    -> [{"file", "bytes"}]."""
    import tarfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import l2a  # noqa: F401

    model = AutoModelForCausalLM.from_pretrained(src, dtype="auto")
    tok = AutoTokenizer.from_pretrained(src)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, max_shard_size=max_bytes)
    tok.save_pretrained(tmp)
    small = sorted(f for f in tmp.iterdir() if not f.name.endswith(".safetensors"))
    with tarfile.open(tmp / BASE_BUNDLE, "w") as tar:
        for f in small:
            tar.add(f, arcname=f.name)
    for f in small:
        f.unlink()
    files = sorted(tmp.iterdir())
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)  # left packed: it may be the results folder copied off the host
    return [{"file": f.name, "bytes": (dst / f.name).stat().st_size} for f in files]


def ensure_base(base_dir: Path) -> None:
    """Unpack the small files of a base saved by `save_sharded`, once."""
    import tarfile

    bundle = base_dir / BASE_BUNDLE
    if bundle.exists() and not (base_dir / "config.json").exists():
        with tarfile.open(bundle) as tar:
            tar.extractall(base_dir, filter="data")


def _list(value: str, known=None) -> list[str]:
    items = [v for v in value.split(",") if v]
    if known is not None:
        bad = [v for v in items if v not in known]
        if bad:
            raise StudyError(f"{bad[0]}: unknown (known: {', '.join(known)})")
    return items


def _int(value: str, flag: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise StudyError(f"{flag}: {value!r} is not an integer") from None


def main(argv: list[str] | None = None) -> int:
    from study.samples import SamplesError
    from study.stats import PairingError

    p = argparse.ArgumentParser(prog="python -m study", description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["prepare", "pretrain", "extend", "eval", "prune", "report",
                                     "pack-data", "derive-samples"])
    p.add_argument("--scale", choices=["full", "tiny"], default="full")
    p.add_argument("--runs", default=str(ROOT / "runs" / "study"), help="run directories")
    p.add_argument("--results", default=str(ROOT / "study" / "results"))
    p.add_argument("--base-dir", default=os.environ.get("L2A_STUDY_BASE",
                                                        str(ROOT / ".cache" / "study" / "base")))
    p.add_argument("--base-seeds", default=",".join(map(str, BASE_SEEDS)),
                   help="pretrain: the bases to pretrain; extend, eval, prune: the bases whose "
                        "runs to make or take (base seed 0 in --base-dir, b in <base-dir>-seed<b>)")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--lengths", default=",".join(LENGTHS))
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="extension seeds")
    p.add_argument("--samples", type=int, default=None,
                   help=f"eval: generated samples per task and length (default {EVAL_SAMPLES}; "
                        f"--scale tiny {TINY['samples'][0]})")
    p.add_argument("--teacher-forced-samples", type=int, default=None,
                   help=f"eval: teacher-forced samples per task and length, >= --samples "
                        f"(default {TEACHER_FORCED_SAMPLES}; --scale tiny {TINY['samples'][1]})")
    p.add_argument("--samples-dir", default=None,
                   help="eval, prune: where the per-sample records go (default "
                        "<results>/samples); report, derive-samples: a folder holding every "
                        "run's records as <samples-dir>/<run>/ (default: each run's own "
                        "<results>/<run>/samples/)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop a training run after this long (checkpoint, export)")
    p.add_argument("--data-archives", default=None,
                   help="train from the .tar.xz of pack-data in this directory (no `datasets`)")
    p.add_argument("--out", default=str(ROOT / "study" / "RESULTS.md"), help="report: the page")
    args = p.parse_args(argv)
    try:
        for flag in ("samples", "teacher_forced_samples"):
            n = getattr(args, flag)
            if n is not None and n < 1:
                raise StudyError(f"--{flag.replace('_', '-')} {n}: must be at least 1")
        base_seeds = [_int(x, "--base-seeds") for x in _list(args.base_seeds)]
        seeds = [_int(x, "--seeds") for x in _list(args.seeds)]
        samples_root = Path(args.samples_dir) if args.samples_dir else None
        study = Study(args)
        if args.step == "prepare":
            lengths = _list(args.lengths, LENGTHS) if args.scale == "full" else []
            study.prepare([None, *lengths])  # tiny: every step reads the same 512-token rows
        elif args.step == "pack-data":
            lengths = _list(args.lengths, LENGTHS) if args.scale == "full" else []
            study.pack_data([None, *lengths])
        elif args.step == "pretrain":
            for b in base_seeds:
                study.pretrain(b)
        elif args.step == "extend":
            study.extend(_list(args.arms, ARMS), _list(args.lengths, LENGTHS), seeds, base_seeds)
        elif args.step in ("eval", "prune"):
            which = {"arms": _list(args.arms, ARMS), "lengths": _list(args.lengths, LENGTHS),
                     "seeds": seeds, "base_seeds": base_seeds}
            (study.evaluate if args.step == "eval" else study.prune)(**which)
        elif args.step == "derive-samples":
            from study.samples import derive_from_logs, records_dir

            results = Path(args.results).resolve()
            out = records_dir(results) if samples_root is None else samples_root / results.name
            made = derive_from_logs(results, out)
            if not made:
                raise StudyError(f"{results}/logs: no eval-results-*.json to derive records from")
            print(f"derive-samples: {len(made)} files in {out}")
        else:
            from study.report import write_report

            write_report(Path(args.results), Path(args.out), samples_root)
    except (StudyError, SamplesError, PairingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0

