"""Atomic, resumable checkpoints.

Layout of `<run dir>/checkpoints/step_<N>/` (N = completed optimizer steps):

    ds/                         DeepSpeed engine state: module, optimizer, LR schedule (per rank)
    ds_universal/               (made on a resume with another number of ranks) the same
                                state in DeepSpeed's rank-independent universal form
    trainer_state_rank<r>.pt    per rank: data loader, RNG (python, numpy, torch, cuda,
                                dense-path generator), sparsity controller, counters
    hf/                         config + tokenizer of the model (what `train.export` rebuilds)
    complete                    written last (JSON: step, world size, time)

A save goes to `.tmp-step_<N>/`; every rank fsyncs what it wrote, then rank 0 writes the
`complete` marker and renames the directory into place. A kill at any point leaves either
the previous checkpoints only (a stale `.tmp-*` that the next save removes) or the new one
complete: `train.resume=auto` only ever picks directories with the marker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from l2a.errors import first_line
from train.distributed import DistInfo, barrier

CKPT_SUBDIR = "checkpoints"
DS_TAG = "ds"
UNIVERSAL_TAG = "ds_universal"
COMPLETE = "complete"
_STEP_RE = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """An unusable checkpoint; the message is one line naming the path."""


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def list_complete(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    root = Path(run_dir) / CKPT_SUBDIR
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / COMPLETE).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_complete(run_dir: str | os.PathLike) -> Path | None:
    found = list_complete(run_dir)
    return found[-1][1] if found else None


def read_marker(path: str | os.PathLike) -> dict:
    """Check that `path` is a complete checkpoint; return its marker (one-line errors)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory")
    marker = path / COMPLETE
    if not marker.is_file():
        if not _STEP_RE.match(path.name) and not (path / DS_TAG).exists():
            raise CheckpointError(f"{path}: neither a checkpoint (step_<N>/ with '{COMPLETE}') "
                                  f"nor a run directory (with {CKPT_SUBDIR}/)")
        raise CheckpointError(
            f"{path}: incomplete checkpoint (no '{COMPLETE}' marker: the save was interrupted)"
        )
    # A marker is written whole and renamed into place with its directory: one that does
    # not parse, or disagrees with what lies beside it, was edited or damaged afterwards.
    # Resuming from it would report (and check train.max_steps against) a step it is not at.
    fix = f"restore it, or remove {path} and resume from another checkpoint"
    try:
        meta = json.loads(marker.read_text())
        step = int(meta["step"])
        world_size = int(meta.get("world_size", 1))
    except Exception as e:
        raise CheckpointError(f"{marker}: corrupt marker ({first_line(e, with_type=True)}; {fix})") from None
    named = _STEP_RE.match(path.name)
    if named and int(named.group(1)) != step:
        raise CheckpointError(
            f"{marker}: says step {step}, but the checkpoint is {path.name} (an edited marker; "
            f"{fix})"
        )
    states = len(list(path.glob("trainer_state_rank*.pt")))  # one per saving rank
    if states and states != world_size:
        raise CheckpointError(
            f"{marker}: says world_size {world_size}, but the checkpoint holds the trainer "
            f"states of {states} rank(s) (an edited marker; {fix})"
        )
    for need in (path / DS_TAG, path / "hf" / "config.json"):
        if not need.exists():
            raise CheckpointError(f"{path}: corrupt checkpoint ({need.name} missing)")
    return meta


def is_run_dir(path: Path) -> bool:
    """A run directory (holds `checkpoints/`), as opposed to one checkpoint (holds `ds/`)."""
    return path.is_dir() and (path / CKPT_SUBDIR).is_dir() and not (path / DS_TAG).exists()


def checkpoint_of(path: str | os.PathLike) -> Path:
    """A checkpoint directory, or a run directory meaning its latest complete checkpoint."""
    path = Path(path).expanduser()
    if is_run_dir(path):
        latest = latest_complete(path)
        if latest is None:
            raise CheckpointError(f"{path}: run directory without a complete checkpoint")
        return latest
    return path


def resolve_resume(resume: str, run_dir: str | os.PathLike) -> Path | None:
    """`train.resume`: auto -> latest complete checkpoint of the run (or None), never ->
    None, else an explicit checkpoint directory or a run directory (its latest complete
    checkpoint), validated."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest_complete(run_dir)
    try:
        path = checkpoint_of(resume)
        read_marker(path)
    except CheckpointError as e:
        raise CheckpointError(f"train.resume: {e}") from None
    return path


def check_resume_step(path: Path | None, max_steps: int) -> None:
    """A checkpoint past `train.max_steps` has nothing left to train: say so up front."""
    if path is None:
        return
    step = int(read_marker(path)["step"])
    if step > max_steps:
        raise CheckpointError(
            f"train.resume: {path} is at step {step}, past train.max_steps={max_steps}: "
            f"nothing to train (set train.max_steps > {step} to continue it)"
        )


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fault_point(name: str, step: int) -> None:
    """Test hook: `L2A_FAULT=<name>:<step>[,...]` SIGKILLs this process at that point, so
    tests can kill a run deterministically (e.g. `kill_in_save:4` mid-checkpoint)."""
    spec = os.environ.get("L2A_FAULT", "")
    if f"{name}:{step}" in spec.split(","):
        os.kill(os.getpid(), signal.SIGKILL)


def hold_point(name: str, step: int, released, timeout_s: float = 300.0) -> None:
    """Test hook: `L2A_FAULT=<name>:<step>` holds this process there until `released()`
    (e.g. a preemption signal arrived) or `timeout_s`, so a signal test cannot lose the race
    against the end of a short run."""
    if f"{name}:{step}" not in os.environ.get("L2A_FAULT", "").split(","):
        return
    deadline = time.monotonic() + timeout_s
    while not released() and time.monotonic() < deadline:
        time.sleep(0.05)


def save_checkpoint(engine, run_dir: Path, step: int, trainer_state: dict, meta: dict,
                    model_config, tokenizer, dist: DistInfo, keep: int) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint directory."""
    root = Path(run_dir) / CKPT_SUBDIR
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{step_dir_name(step)}"
    if dist.is_main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a save that was killed
        tmp.mkdir()
    barrier()
    engine.save_checkpoint(str(tmp), tag=DS_TAG, save_latest=False)
    torch.save(trainer_state, tmp / f"trainer_state_rank{dist.rank:05d}.pt")
    if dist.is_main:
        model_config.save_pretrained(tmp / "hf")
        tokenizer.save_pretrained(tmp / "hf")
    fault_point("kill_in_save", step)
    _fsync_tree(tmp)
    barrier()
    if dist.is_main:
        marker = {"step": step, "world_size": dist.world_size, "time": time.time(), **meta}
        with open(tmp / COMPLETE, "w") as f:
            json.dump(marker, f)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():  # the same step saved again (e.g. preempted right after a save)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        if keep > 0:
            for _, old in list_complete(run_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def saved_world_size(path: Path) -> int:
    return int(read_marker(path).get("world_size", 1))


def saved_sequence_parallel(path: Path) -> int:
    return int(read_marker(path).get("sequence_parallel", 1))


def to_universal(path: Path, dist: DistInfo) -> str:
    """Collective. DeepSpeed's universal form of `path/ds` (per-parameter fp32 weights and
    optimizer moments, independent of the number of ranks) in `path/ds_universal`,
    converted once by rank 0 (into a temporary directory, then renamed); returns the tag."""
    out = path / UNIVERSAL_TAG
    if dist.is_main and not out.is_dir():
        tmp = path / f".tmp-{UNIVERSAL_TAG}"
        shutil.rmtree(tmp, ignore_errors=True)
        # Its own process: the converter uses worker pools and prints a lot.
        proc = subprocess.run(
            [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
             "--input_folder", str(path / DS_TAG), "--output_folder", str(tmp),
             # A plain HF model (no Megatron tensor-parallel layout) has no client metadata.
             "--inject_missing_state"],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise CheckpointError(f"{path}: cannot convert to DeepSpeed's universal form ({tail})")
        os.replace(tmp, out)
    barrier()
    return UNIVERSAL_TAG


def load_checkpoint(engine, path: Path, dist: DistInfo, universal: bool = False) -> dict:
    """Restore the engine from `path` and return this rank's trainer state.

    `universal`: the checkpoint was saved by a different number of ranks; the engine (built
    with `checkpoint.load_universal`) loads the universal form (to_universal), and every
    rank takes the rank-independent trainer state of rank 0 (step, data position, sparsity
    controller); per-rank random streams are re-seeded, so the resumed run continues the
    same data and schedule but is not bit-identical to an uninterrupted one."""
    meta = read_marker(path)
    saved = int(meta.get("world_size", dist.world_size))
    if saved != dist.world_size and not universal:
        raise CheckpointError(
            f"{path}: saved with {saved} ranks, this run has {dist.world_size} "
            f"(resume with the same number of processes, or export it and start a new run)"
        )
    rank_file = 0 if universal else dist.rank
    state_file = path / f"trainer_state_rank{rank_file:05d}.pt"
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{state_file}: cannot read ({first_line(e, with_type=True)})") from None
    if int(state.get("step", -1)) != int(meta["step"]):  # a marker copied from another step
        raise CheckpointError(
            f"{path / COMPLETE}: says step {meta['step']}, but {state_file.name} is at step "
            f"{state.get('step')} (an edited marker; restore it)"
        )
    if universal:
        state["rng"] = None  # the caller re-seeds this rank's streams
    tag = to_universal(path, dist) if universal else DS_TAG
    try:
        loaded, _ = engine.load_checkpoint(
            str(path), tag=tag, load_module_strict=True, load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
    except Exception as e:
        raise CheckpointError(f"{path}: cannot load the DeepSpeed state ({first_line(e, with_type=True)})") from None
    if loaded is None:
        raise CheckpointError(f"{path}: cannot load the DeepSpeed state (files missing)")
    return state
