"""The tiny experiment end to end, in-process: metrics, checkpoints, summary, sparsity plot,
wandb (offline), export reload, and which parameters training changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_helpers import (
    METHOD_FROZEN,
    METHOD_TRAINABLE,
    assert_same_steps,
    read_metrics,
    run_in_process,
)

REQUIRED = {"step", "loss", "lm_loss", "sparsity", "sparsity/layer_0", "sparsity/layer_1",
            "lambda", "reg", "lr", "grad_norm", "tokens_per_s"}


@pytest.fixture(scope="module")
def tiny_run(base_overrides, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tiny-run")
    overrides = base_overrides + ["train.export=true", "train.plot=true",
                                  "train.wandb.mode=offline"]
    code, trainer = run_in_process(overrides, run_dir)
    return code, run_dir, trainer


def test_exits_cleanly_and_logs_every_step(tiny_run):
    code, run_dir, _ = tiny_run
    assert code == 0
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for r in rows:
        assert REQUIRED <= set(r), REQUIRED - set(r)
        for k in REQUIRED:
            assert isinstance(r[k], (int, float)) and torch.isfinite(torch.tensor(float(r[k])))
        assert 0.0 <= r["sparsity"] <= 1.0
    assert rows[0]["lm_loss"] > 4.0  # random init over a 320-token vocabulary
    assert rows[0]["sparsity"] == 0.0  # paper init: every token routed at step 0


def test_checkpoints_summary_and_plot(tiny_run):
    _, run_dir, _ = tiny_run
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["step_00000003", "step_00000006"]
    for name in ckpts:
        assert (run_dir / "checkpoints" / name / "complete").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("experiment", "overrides", "steps", "final_loss", "final_lm_loss", "sparsity",
                "layer_sparsity", "tokens_per_s", "export_dir"):
        assert key in summary
    assert summary["experiment"] == "tiny" and summary["steps"] == 6
    assert "train.max_steps=6" in summary["overrides"]
    last = read_metrics(run_dir)[-1]
    assert summary["final_loss"] == last["loss"] and len(summary["layer_sparsity"]) == 2
    assert (run_dir / "sparsity_per_layer.png").read_bytes()[:4] == b"\x89PNG"
    assert any((run_dir / "wandb").glob("offline-run-*"))


def test_export_reloads_and_only_trainable_params_changed(tiny_run):
    from transformers import AutoModelForCausalLM

    import l2a  # noqa: F401
    from train.build_model import cached_model_dir

    _, run_dir, trainer = tiny_run
    summary = json.loads((run_dir / "summary.json").read_text())
    exported = AutoModelForCausalLM.from_pretrained(summary["export_dir"])
    assert type(exported).__name__ == "L2AQwen3ForCausalLM"
    initial = AutoModelForCausalLM.from_pretrained(cached_model_dir(trainer.cfg))
    before, after = initial.state_dict(), exported.state_dict()
    # The method's rule, written out in train_helpers (not taken from l2a.trainable).
    trainable = {n for n in before if METHOD_TRAINABLE.fullmatch(n)}
    assert all(METHOD_FROZEN.fullmatch(n) for n in set(before) - trainable)
    assert any("router" in n for n in trainable) and any("mlp" in n for n in before)
    for name, tensor in before.items():
        if name in trainable:
            assert not torch.equal(tensor, after[name]), f"{name} did not train"
        else:
            assert torch.equal(tensor, after[name]), f"frozen {name} changed"
    ids = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        out = exported(input_ids=ids)
    assert out.logits.shape == (1, 16, exported.config.vocab_size)
    assert torch.isfinite(out.logits).all()


def test_export_and_checkpoints_hold_no_runtime_switch(tiny_run):
    """Runtime policy (backend, dense-path probability, routed projections, compiled
    elementwise work) is not the model: an export loads the same whatever it trained with."""
    _, run_dir, _ = tiny_run
    summary = json.loads((run_dir / "summary.json").read_text())
    configs = [Path(summary["export_dir"]) / "config.json",
               *(run_dir / "checkpoints").glob("step_*/hf/config.json")]
    assert len(configs) >= 2
    for path in configs:
        config = json.loads(path.read_text())
        assert config["l2a_window"] == 32  # the model's identity is there
        assert not {k for k in config if k.startswith("l2a_")} & {
            "l2a_attn_backend", "l2a_dense_prob", "l2a_routed_projections",
            "l2a_fused_elementwise"}, path


def test_export_cli_from_any_checkpoint(tiny_run, tmp_path):
    import subprocess
    import sys

    from train_helpers import ROOT

    _, run_dir, _ = tiny_run
    ckpt = run_dir / "checkpoints" / "step_00000003"
    proc = subprocess.run([sys.executable, "-m", "train.export", str(ckpt), str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file()
    bad = subprocess.run([sys.executable, "-m", "train.export", str(tmp_path / "nope"),
                          str(tmp_path / "out2")], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and not (tmp_path / "out2").exists()
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "checkpoint not found" in lines[-1]


def test_activation_checkpointing_gives_the_same_steps(base_overrides, tmp_path):
    short = base_overrides + ["train.max_steps=2", "train.ckpt_every=0", "train.save_final=false"]
    code_a, _ = run_in_process(short + ["train.activation_checkpointing=false"], tmp_path / "a")
    code_b, _ = run_in_process(short + ["train.activation_checkpointing=true"], tmp_path / "b")
    assert code_a == code_b == 0
    assert_same_steps(tmp_path / "a", tmp_path / "b", loss_rel=1e-6, grad_rel=1e-5)


def test_dense_baseline_trains_attention_only(shared_dirs, tmp_path):
    overrides = ["experiment=tiny_dense", "train.max_steps=2", "train.ckpt_every=0",
                 "train.save_final=false", "train.export=false", "train.progress_bar=false",
                 "train.wandb.mode=disabled"] + [f"{k}={v}" for k, v in shared_dirs.items()]
    code, trainer = run_in_process(overrides, tmp_path)
    assert code == 0
    assert type(trainer.model_config).__name__ == "Qwen3Config"
    rows = read_metrics(tmp_path)
    assert [r["sparsity"] for r in rows] == [0.0, 0.0] and rows[-1]["lm_loss"] > 0
    assert 0 < trainer.n_trainable < trainer.n_params


def test_corrupt_checkpoint_given_explicitly_is_one_line_error(tiny_run, base_overrides, tmp_path,
                                                               capsys):
    import shutil

    from train_helpers import compose_run

    from train.trainer import run

    _, run_dir, _ = tiny_run
    ckpt = tmp_path / "step_00000003"
    shutil.copytree(run_dir / "checkpoints" / "step_00000003", ckpt)
    state = ckpt / "trainer_state_rank00000.pt"
    state.write_bytes(state.read_bytes()[:100])  # truncated
    code = run(compose_run(base_overrides + [f"train.resume={ckpt}"]), tmp_path / "run", [])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2  # a checkpoint error (docs/DESIGN.md)
    assert err[-1].startswith(f"error: {state}: cannot read (")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_zero3_offload_matches_zero1(base_overrides, tmp_path):
    """`deepspeed=zero3_offload` (parameters and optimizer states in CPU memory, torch AdamW
    on the host) takes the same steps as plain ZeRO-1."""
    short = base_overrides + ["train.max_steps=2", "train.ckpt_every=0", "train.save_final=false"]
    code_a, _ = run_in_process(short + ["deepspeed=zero1"], tmp_path / "zero1")
    code_b, _ = run_in_process(short + ["deepspeed=zero3_offload"], tmp_path / "offload")
    assert code_a == code_b == 0
    assert_same_steps(tmp_path / "zero1", tmp_path / "offload", loss_rel=1e-5, grad_rel=1e-4,
                      steps=2)
