"""Every command the README documents, run as a user would (CPU-sized, a step or two).

The README's ```bash blocks are parsed; each command is either run here with small step
counts and private directories, or listed in NOT_RUN_HERE with the reason (GPU, Slurm, the
hub, an editor). A command added to the README fails this test until it is one or the
other, so a documented example cannot break unnoticed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Eight commands, four of them training runs in their own processes: minutes on 2 cores.
pytestmark = pytest.mark.timeout(2400)

# command prefix (after parsing) -> why it does not run in the CPU suite
NOT_RUN_HERE = {
    "make ": "make targets wrap `python -m train experiment=tiny` (run below) and setup",
    "torchrun --nproc_per_node=8 ": "8 GPUs and Qwen/Qwen3-8B from the hub",
    ".venv/bin/pip ": "installs GPU extras",
    "python -m bench.attention": "GPU benchmark",
    "sbatch ": "Slurm (tests/launch covers the scripts)",
    "cp conf/local/": "cluster set-up",
    "$EDITOR ": "cluster set-up",
    "python -m train -m experiment=qwen3_128k": "Slurm sweep of Qwen3-8B",
    "pip install -e .": "tests/test_install.py installs the packages",
    "python -m eval model.path=outputs/qwen3_128k/": "the default suite up to 128K: GPU-sized",
    "python -m eval model.path=Qwen/Qwen3-8B": "Qwen/Qwen3-8B from the hub",
}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)  # line continuations
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()  # trailing comments
            if line and not line.startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


def _skipped(cmd: str) -> bool:
    return any(cmd.startswith(prefix) for prefix in NOT_RUN_HERE)


def test_every_readme_command_is_run_or_excused():
    commands = readme_commands()
    assert any(c.startswith("python -m train experiment=tiny") for c in commands)
    runnable = [c for c in commands if not _skipped(c)]
    unknown = [c for c in runnable if not c.startswith(
        ("python -m train ", "python -m train.export ", "python -m l2a.convert ",
         "python -m train.prune ", "python -m launch.summarize "))]
    assert not unknown, f"README commands neither run by this test nor excused: {unknown}"


def _set(argv: list[str], key: str, value: str) -> list[str]:
    """Replace or add a Hydra override."""
    out = [a for a in argv if not a.startswith(f"{key}=")]
    return out + [f"{key}={value}"]


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> dict:
    """Run the README's runnable commands in order; returns {command: (result, dirs)}."""
    tmp = tmp_path_factory.mktemp("readme")
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    # Private caches, and less data to prepare than the tiny preset's (a step or two reads
    # a few rows).
    shared = [f"model.cache_dir={tmp / 'models'}", f"data.prepared_dir={tmp / 'data'}",
              f"data.cache_dir={tmp / 'datasets'}", "train.progress_bar=false",
              "data.sources.0.generated.num_docs=200", "data.synthetic.num_samples=100"]
    results: dict = {}
    first_run = sweep_dir = None
    for n, cmd in enumerate(c for c in readme_commands() if not _skipped(c)):
        argv = shlex.split(cmd)
        dirs: dict = {}
        if first_run is not None:  # the README's placeholder for an earlier run
            argv = [a.replace("outputs/tiny/<run>", str(first_run)) for a in argv]
        if argv[:3] == ["python", "-m", "train"]:
            args = argv[3:]
            sweep = "-m" in args
            resume = any(a.startswith("train.resume=") for a in args)
            dirs["steps"] = 1 if sweep else 3 if resume else 2  # a resumed run: one step more
            args = _set(args, "train.max_steps", str(dirs["steps"])) + shared
            if sweep:
                dirs["sweep"] = sweep_dir = tmp / f"sweep{n}"
                args.append(f"hydra.sweep.dir={sweep_dir}")
            else:
                dirs["run"] = tmp / f"run{n}"
                first_run = first_run or dirs["run"]
                args.append(f"hydra.run.dir={dirs['run']}")
            argv = argv[:3] + args
        elif argv[:3] == ["python", "-m", "train.export"]:
            ckpt = sorted((first_run / "checkpoints").iterdir())[-1]
            dirs["out"] = tmp / "exported"
            argv = argv[:3] + [str(ckpt), str(dirs["out"])] + argv[5:]
            assert ckpt.name == "step_00000002"
        elif argv[:3] == ["python", "-m", "l2a.convert"]:
            # The tiny random base the runs above built stands in for the hub model.
            (base,) = (tmp / "models").glob("random-base-*")
            dirs["out"] = tmp / "converted"
            argv = _replace_flag(_replace_flag(argv, "--base", str(base)), "--out", str(dirs["out"]))
        elif argv[:3] == ["python", "-m", "train.prune"]:
            # The model the convert command above wrote; short haystacks (CPU attention).
            dirs["out"] = tmp / "pruned"
            argv = _replace_flag(_replace_flag(argv, "--model", str(tmp / "converted")),
                                 "--out", str(dirs["out"]))
            argv = _replace_flag(_replace_flag(argv, "--seq-len", "256"), "--num-samples", "2")
        elif argv[:3] == ["python", "-m", "launch.summarize"]:
            argv = argv[:3] + [str(sweep_dir)] + argv[4:]
        argv = [sys.executable] + argv[1:]
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        results[cmd] = (proc, dirs)
    return results


def _replace_flag(argv: list[str], flag: str, value: str) -> list[str]:
    i = argv.index(flag)
    return argv[: i + 1] + [value] + argv[i + 2:]


@pytest.mark.slow
def test_readme_commands_run(ran):
    assert len(ran) >= 8, list(ran)
    for cmd, (proc, dirs) in ran.items():
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        if "run" in dirs:  # a training run: summary, export that reloads
            summary = json.loads((dirs["run"] / "summary.json").read_text())
            assert summary["steps"] == dirs["steps"], cmd
            assert (Path(summary["export_dir"]) / "config.json").is_file(), cmd
        if "sweep" in dirs:
            done = [json.loads(p.read_text())["steps"] for p in dirs["sweep"].glob("*/summary.json")]
            assert done == [1, 1], cmd
        if "out" in dirs:
            assert (dirs["out"] / "config.json").is_file() and any(dirs["out"].glob("*.safetensors")), cmd


@pytest.mark.slow
def test_readme_zero3_example_exports_whole_weights(ran):
    """The ZeRO-3 example used to fail in its final export (weights built partitioned)."""
    from safetensors.torch import load_file

    (cmd,) = [c for c in ran if "deepspeed=zero3" in c]
    proc, dirs = ran[cmd]
    assert proc.returncode == 0, proc.stderr[-3000:]
    export = Path(json.loads((dirs["run"] / "summary.json").read_text())["export_dir"])
    weights = {}
    for f in export.glob("*.safetensors"):
        weights.update(load_file(f))
    assert weights and all(t.numel() > 0 for t in weights.values())
    assert weights["model.embed_tokens.weight"].shape[1] == 64  # conf/model/tiny.yaml hidden size


@pytest.mark.slow
def test_readme_convert_example_keeps_its_settings(ran):
    (cmd,) = [c for c in ran if c.startswith("python -m l2a.convert")]
    config = json.loads((ran[cmd][1]["out"] / "config.json").read_text())
    assert config["l2a_window"] == 4095 and config["max_position_embeddings"] == 131072
    assert config["rope_parameters"]["rope_theta"] == 5e6 and config["l2a_init"] == "paper"
