"""A run directory belongs to its run, end to end through `python -m train`: a second
trainer on it is refused while the first holds its lock, a killed holder leaves no stale
lock, `train.resume=never` does not mix a new run into an old one, what an interrupted
save or export left is removed, and the export and summary come from the checkpoint this
run wrote (not from a later one the directory holds)."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from safetensors.torch import load_file
from train_helpers import ROOT, read_metrics, run_cli

HOLD = ("import sys, time\n"
        "from train.run_dir import RunDirLock\n"
        "RunDirLock(sys.argv[1]).acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n")


def _errors(proc) -> list[str]:
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]


def test_a_directory_in_use_is_refused_and_a_killed_holder_leaves_no_lock(base_overrides,
                                                                           tmp_path):
    run_dir = tmp_path / "run"
    args = base_overrides + ["train.max_steps=1", "train.ckpt_every=0"]
    # What a save and an export killed midway leave behind.
    (run_dir / "checkpoints" / ".tmp-step_00000009" / "ds").mkdir(parents=True)
    (run_dir / ".export.tmp-k1x2").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused = run_cli(args, run_dir)
        assert refused.returncode == 2
        assert _errors(refused) == [f"error: {run_dir}: in use by another run (pid {holder.pid} "
                                    f"on {__import__('socket').gethostname()}); wait for it to end "
                                    f"or choose another run directory (hydra.run.dir=...)"]
        # Nothing written into the other run's directory (Hydra's .hydra/, the log).
        assert not (run_dir / ".hydra").exists() and not (run_dir / "train.log").exists()
        assert not (run_dir / "metrics.jsonl").exists()
        assert (run_dir / ".export.tmp-k1x2").is_dir()  # not the refused run's to clean
    finally:
        holder.kill()  # SIGKILL: no chance to release anything
        holder.wait()
    assert (run_dir / ".lock").exists()  # the file stays; the kernel dropped the lock
    ran = run_cli(args, run_dir)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert not (run_dir / ".lock").exists()
    assert not (run_dir / "checkpoints" / ".tmp-step_00000009").exists()
    assert not (run_dir / ".export.tmp-k1x2").exists()
    assert "removed 2 temporary file(s) of an interrupted save or export" in ran.stdout

    # A new run over this one: refused, the old run left as it was.
    metrics = (run_dir / "metrics.jsonl").read_bytes()
    again = run_cli(args + ["train.resume=never"], run_dir)
    assert again.returncode == 2
    assert _errors(again) == [f"error: train.resume=never: {run_dir} already holds a run "
                              "(checkpoints or logged steps); continue it with train.resume=auto, "
                              "or start the new run in another directory (hydra.run.dir=...)"]
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics
    assert not (run_dir / ".lock").exists()


def test_export_and_summary_come_from_the_checkpoint_this_run_wrote(base_overrides, tmp_path):
    """Branching from an earlier checkpoint in the same directory: the directory's latest
    checkpoint (step 4, the old branch) is not this run's (step 3)."""
    from train.export import load_checkpoint_model

    run_dir = tmp_path / "run"
    first = run_cli(base_overrides + ["train.max_steps=4", "train.ckpt_every=2"], run_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    ckpts = run_dir / "checkpoints"
    branch = run_cli(base_overrides + ["train.max_steps=3", "train.ckpt_every=0",
                                       f"train.resume={ckpts / 'step_00000002'}",
                                       "train.export=true"], run_dir)
    assert branch.returncode == 0, branch.stderr[-3000:]
    assert (ckpts / "step_00000004").is_dir()  # still there: the latest in the directory
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["checkpoint"] == str(ckpts / "step_00000003") and summary["steps"] == 3
    step3 = read_metrics(run_dir)[-1]
    assert step3["step"] == 3 and summary["final_loss"] == step3["loss"]
    assert f"final loss {step3['loss']:.4f}" in branch.stdout
    exported = load_file(f"{summary['export_dir']}/model.safetensors")
    router = "model.layers.0.self_attn.router.weight"
    mine = load_checkpoint_model(ckpts / "step_00000003")[0].state_dict()[router]
    other = load_checkpoint_model(ckpts / "step_00000004")[0].state_dict()[router]
    assert not torch.equal(mine, other)
    assert torch.equal(exported[router].float(), mine)
