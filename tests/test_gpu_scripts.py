"""The GPU-host helpers in scripts/ on a machine without a GPU: their usage and bad-input
paths (exit 2, nothing written), the no-GPU path (exit 3, nothing written), and what they
run, seen through stand-ins for nvidia-smi and Python that record each call: which GPU each
step gets, which files of the results folder it writes, what a deadline leaves out. The
offline wheelhouse's list is checked against requirements.txt and requirements-gpu.txt."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SEP = "\x1f"

# Records CUDA_VISIBLE_DEVICES, L2A_KERNEL_CONFIGS and its arguments, one call a line; reads
# the env check's program from stdin; no pytest-xdist; pytest exits FAKE_PYTEST_RC.
FAKE_PYTHON = r"""#!/usr/bin/env bash
# One write per call (O_APPEND): the calls of two steps side by side do not interleave.
line=$(printf '%s\x1f' "${CUDA_VISIBLE_DEVICES-unset}" "${L2A_KERNEL_CONFIGS-unset}" "$@")
printf '%s\n' "$line" >> "$FAKE_LOG"
[ "${1:-}" != - ] || { cat > /dev/null; exit 0; }
[ "${1:-} ${2:-}" != "-c import xdist" ] || exit 1
[ "${1:-} ${2:-}" != "-m pytest" ] || exit "${FAKE_PYTEST_RC:-0}"
exit 0
"""
# FAKE_GPUS GPUs named "NVIDIA H200"; with 0, fails as nvidia-smi does without a driver
# (its complaint on stdout).
FAKE_NVIDIA_SMI = r"""#!/usr/bin/env bash
if [ "${FAKE_GPUS:-0}" = 0 ]; then
  echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."; exit 9
fi
case "$*" in
  *query-gpu=index*) seq 0 $(( FAKE_GPUS - 1 )) ;;
  *query-gpu=name*) for _ in $(seq "$FAKE_GPUS"); do echo "NVIDIA H200"; done ;;
esac
"""


class Host:
    """A machine without a GPU as the scripts see it: nvidia-smi and Python stand-ins first on
    PATH. `run(script, *args, gpus=N, **env)` -> (CompletedProcess, [calls of the fake
    Python]); `shell(code, gpus=N)` runs bash code there."""

    def __init__(self, tmp_path: Path):
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        for name, text in (("python", FAKE_PYTHON), ("nvidia-smi", FAKE_NVIDIA_SMI)):
            (self.bin / name).write_text(text)
            (self.bin / name).chmod(0o755)
        self.log = tmp_path / "calls"
        self.tmp = tmp_path

    def env(self, gpus: int, fake_python: bool = True, **extra) -> dict:
        env = {**os.environ, "PATH": f"{self.bin}:{os.environ['PATH']}", "FAKE_GPUS": str(gpus),
               "FAKE_LOG": str(self.log), "TMPDIR": str(self.tmp),
               "PYTHON": str(self.bin / "python") if fake_python else sys.executable}
        for k in ("RESULTS_DIR", "WHEELHOUSE", "DEADLINE_S", "PHASE_A_S", "BEFORE_S",
                  "BATCH_TRAIN", "TEST_TIMEOUT", "OUT"):
            env.pop(k, None)
        return {**env, **extra}

    def run(self, script, *args, gpus=2, fake_python=True, **extra):
        self.log.write_text("")
        p = subprocess.run(["bash", f"scripts/{script}", *args], cwd=ROOT,
                           env=self.env(gpus, fake_python, **extra),
                           capture_output=True, text=True, timeout=120)
        calls = [line.split(SEP)[:-1] for line in self.log.read_text().splitlines()]
        return p, calls

    def shell(self, code: str, gpus: int) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", code], cwd=ROOT, env=self.env(gpus),
                              capture_output=True, text=True, timeout=60)


@pytest.fixture
def host(tmp_path):
    return Host(tmp_path)


def _module_calls(calls, module):
    """(CUDA_VISIBLE_DEVICES, L2A_KERNEL_CONFIGS, args after `-m module`) of each call."""
    return [(c[0], c[1], c[c.index(module) + 1:]) for c in calls
            if "-m" in c and module in c and c[c.index(module) - 1] == "-m"]


def _value(args, flag):
    return args[len(args) - 1 - args[::-1].index(flag) + 1]  # the last one: argparse's pick


@pytest.mark.parametrize("script, args, env, message", [
    ("gpu_bench.sh", [], {}, "usage: scripts/gpu_bench.sh"),
    ("gpu_bench.sh", ["frob"], {}, "error: unknown job 'frob'"),
    ("gpu_bench.sh", ["--results-dir"], {}, "error: --results-dir: give the folder"),
    ("gpu_bench.sh", ["tests"], {"DEADLINE_S": "9m"}, "error: DEADLINE_S=9m: expected a whole number"),
    ("gpu_bench.sh", ["train"], {"WHEELHOUSE": "/nonexistent"}, "error: WHEELHOUSE=/nonexistent"),
    ("gpu_check.sh", [], {}, "usage: scripts/gpu_check.sh"),
    ("gpu_check.sh", ["tests", "frob"], {}, "error: unknown step 'frob'"),
    ("gpu_check.sh", ["sweep"], {}, "error: sweep: give its argument in quotes"),
    ("gpu_check.sh", ["tests"], {"TEST_TIMEOUT": "x"}, "error: TEST_TIMEOUT=x"),
    ("offline_wheels.sh", ["--python", "312"], {}, "error: --python: give the host's version"),
    ("offline_wheels.sh", ["--arch", "arm"], {}, "error: --arch: x86_64 or aarch64"),
    ("offline_wheels.sh", ["a", "b"], {}, "error: one wheelhouse folder, got 'a' and 'b'"),
    ("offline_wheels.sh", ["--frob"], {}, "error: unknown option '--frob'"),
    ("study_gpu.sh", ["pretrain"], {"WHEELHOUSE": "/nonexistent"}, "error: WHEELHOUSE=/nonexistent"),
])
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(host, tmp_path, script, args, env,
                                                            message):
    p, calls = host.run(script, *args, gpus=2, RESULTS_DIR=str(tmp_path / "results"), **env)
    assert p.returncode == 2, p.stderr
    assert p.stderr.splitlines()[0].startswith(message), p.stderr
    assert not (tmp_path / "results").exists() and not calls


def test_study_runner_passes_bad_arguments_to_its_parser(host, tmp_path):
    # The real interpreter: python -m study.gpu_host's own usage error, nothing written.
    p, _ = host.run("study_gpu.sh", fake_python=False, RESULTS_DIR=str(tmp_path / "results"))
    assert p.returncode == 2 and "the following arguments are required: mode" in p.stderr
    assert not (tmp_path / "results").exists()
    p, _ = host.run("study_gpu.sh", "--help", fake_python=False)
    assert p.returncode == 0 and "--deadline-minutes" in p.stdout and "--started-at" in p.stdout


@pytest.mark.parametrize("script", ["gpu_bench.sh", "gpu_check.sh", "offline_wheels.sh"])
def test_help_prints_the_usage_and_exits_0(host, script):
    p, calls = host.run(script, "--help")
    assert p.returncode == 0 and p.stdout.startswith(f"usage: scripts/{script}"), p.stderr
    assert "Results" in p.stdout or "wheelhouse" in p.stdout
    assert not calls


@pytest.mark.parametrize("script, args", [("gpu_bench.sh", ["tests"]), ("gpu_check.sh", ["tests"])])
def test_without_a_gpu_exit_3_before_writing(host, tmp_path, script, args):
    p, calls = host.run(script, "--results-dir", str(tmp_path / "results"), *args, gpus=0)
    assert p.returncode == 3
    assert p.stderr.strip() == "error: no NVIDIA GPU visible (nvidia-smi lists none): run this on a GPU host"
    assert not (tmp_path / "results").exists() and not calls


def test_default_results_folder_names_the_gpus_and_the_time(host):
    for gpus, prefix in ((2, "H200-x2"), (0, "cpu-x0")):
        p = host.shell("source scripts/gpu_host_lib.sh; gpu_host_default_results study-", gpus)
        assert re.fullmatch(rf"gpu_results/study-{prefix}-\d{{4}}-\d\d-\d\d-\d{{6}}\n", p.stdout), p
        assert host.shell("source scripts/gpu_host_lib.sh; gpu_host_gpus", gpus).stdout == f"{gpus}\n"


def test_batch_on_two_gpus_tests_beside_the_timings_then_trains_on_both(host, tmp_path):
    results = tmp_path / "results"
    p, calls = host.run("gpu_bench.sh", "--results-dir", str(results), "batch", "--steps", "5")
    assert p.returncode == 0, p.stdout + p.stderr
    [(gpu, _, tests)] = _module_calls(calls, "pytest")
    assert gpu == "0" and "-m" in tests and "gpu" in tests
    assert f"--junitxml={results}/tests.xml" in tests
    [(gpu, _, attention)] = _module_calls(calls, "bench.attention")
    assert gpu == "1" and _value(attention, "--out") == f"{results}/attention.json"
    [(_, _, train)] = _module_calls(calls, "torch.distributed.run")
    assert "--nproc_per_node=2" in train and _value(train, "--sequence-parallel") == "2"
    assert _value(train, "--out") == f"{results}/train.json" and _value(train, "--steps") == "5"
    assert _module_calls(calls, "bench.fast_path_summary")[-1][2] == [str(results)]
    assert calls[-1][2:] == ["-m", "bench.fast_path_summary", str(results)]  # the last step
    log = (results / "log.txt").read_text()
    assert all(f"] {step}: done" in log for step in ("tests", "attention", "train")), log


def test_batch_on_one_gpu_runs_the_timings_after_the_tests_and_no_training(host, tmp_path):
    results = tmp_path / "results"
    p, calls = host.run("gpu_bench.sh", "--results-dir", str(results), "batch", gpus=1)
    assert p.returncode == 0, p.stdout + p.stderr
    modules = [c[c.index("-m") + 1] for c in calls if "-m" in c]
    assert modules == ["pytest", "bench.attention", "bench.fast_path_summary"]
    assert _module_calls(calls, "bench.attention")[0][0] == "0"
    assert "no training comparison in batch (BATCH_TRAIN=1" in p.stdout
    p, calls = host.run("gpu_bench.sh", "--results-dir", str(results), "batch", gpus=1,
                        BATCH_TRAIN="1")
    assert len(_module_calls(calls, "torch.distributed.run")) == 1


def test_a_failed_step_makes_the_run_fail_and_is_named(host, tmp_path):
    p, _ = host.run("gpu_bench.sh", "--results-dir", str(tmp_path / "r"), "tests", FAKE_PYTEST_RC="1")
    assert p.returncode == 1 and "failed: tests" in p.stdout


def test_compare_runs_before_then_after_with_the_args_in_both(host, tmp_path):
    results = tmp_path / "results"
    p, calls = host.run("gpu_bench.sh", "--results-dir", str(results), "compare",
                        "--model", "qwen3_1p7b_random", gpus=1)
    assert p.returncode == 0, p.stdout + p.stderr
    before, after = (c[2] for c in _module_calls(calls, "torch.distributed.run"))
    assert _value(before, "--out") == f"{results}/train_before.json"
    assert _value(before, "--variants") == "l2a_fused" and "l2a.attn_backend=triton" in before
    assert _value(after, "--out") == f"{results}/train.json"
    assert _value(after, "--variants") == "l2a_routed_fused,dense" and "--profile" in after
    assert _value(before, "--model") == _value(after, "--model") == "qwen3_1p7b_random"
    assert "--nproc_per_node=1" in before and _value(before, "--sequence-parallel") == "1"


def test_a_deadline_too_close_starts_no_training_and_no_deadline_caps_nothing(host, tmp_path):
    # 100 s less the 10 s margin is under the 120 s a training run needs at least.
    p, calls = host.run("gpu_bench.sh", "--results-dir", str(tmp_path / "r"), "compare",
                        DEADLINE_S="100")
    assert p.returncode == 0 and not _module_calls(calls, "torch.distributed.run")
    assert p.stdout.count("not started") == 2
    p, _ = host.run("gpu_bench.sh", "--results-dir", str(tmp_path / "r2"), "train")
    assert "(at most" not in p.stdout  # no DEADLINE_S: no time limit of ours


def test_a_wheelhouse_is_installed_first_and_only_when_given(host, tmp_path):
    wheelhouse = tmp_path / "wh"
    wheelhouse.mkdir()
    (wheelhouse / "requirements.txt").write_text("hjson==3.1.0\n")
    _, calls = host.run("gpu_bench.sh", "--results-dir", str(tmp_path / "r"), "tests",
                        WHEELHOUSE=str(wheelhouse))
    assert calls[0][2:] == ["-m", "pip", "install", "-q", "--no-index", "--no-deps", "--find-links",
                            str(wheelhouse), "-r", f"{wheelhouse}/requirements.txt"]
    _, calls = host.run("gpu_bench.sh", "--results-dir", str(tmp_path / "r"), "tests")
    assert not _module_calls(calls, "pip")


def test_gpu_check_tune_then_bench_measures_with_the_tuned_configs(host, tmp_path):
    results = tmp_path / "results"
    p, calls = host.run("gpu_check.sh", "--results-dir", str(results),
                        "tune", "fwd:-kv_desc;dq:-kv_desc dkdv:64,128,8,2",
                        "bench", "--lengths 131072 --fractions 0.2")
    assert p.returncode == 0, p.stdout + p.stderr
    sweep, bench = _module_calls(calls, "bench.attention")
    assert sweep[2] == ["--sweep", "fwd:-kv_desc;dq:-kv_desc", "dkdv:64,128,8,2",
                        "--out", f"{results}/sweep.json"]
    [pick] = _module_calls(calls, "kernels.tuning.pick")
    assert pick[2] == [f"{results}/sweep.json", "--out", f"{results}/tuned.json"]
    assert sweep[1] == "unset" and bench[1] == f"{results}/tuned.json"
    assert bench[2] == ["--lengths", "131072", "--fractions", "0.2", "--out", f"{results}/bench.json"]
    assert (results / "gpu.txt").exists()


def test_study_runner_gives_the_results_folder_and_the_jobs_start(host, tmp_path):
    started = time.time()
    p, calls = host.run("study_gpu.sh", "arms", "--lengths", "16k", gpus=0,
                        RESULTS_DIR=str(tmp_path / "results"))
    assert p.returncode == 0, p.stderr
    [(_, _, args)] = _module_calls(calls, "study.gpu_host")
    assert args[:3] == ["--out", str(tmp_path / "results"), "arms"]
    assert started - 5 < float(_value(args, "--started-at")) <= time.time()
    # An --out of the caller's comes later, and argparse keeps the last.
    _, calls = host.run("study_gpu.sh", "pretrain", "--out", "mine", gpus=0)
    [(_, _, args)] = _module_calls(calls, "study.gpu_host")
    assert re.fullmatch(r"gpu_results/study-cpu-x0-[0-9-]+", args[1]) and _value(args, "--out") == "mine"


def _requirements() -> dict:
    reqs = {}
    for name in ("requirements.txt", "requirements-gpu.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                r = Requirement(line)
                reqs[canonicalize_name(r.name)] = r
    return reqs


@pytest.mark.parametrize("fa4", [False, True])
def test_wheelhouse_pins_agree_with_the_requirements(host, fa4):
    p, calls = host.run("offline_wheels.sh", "--list", *(["--with-fa4"] if fa4 else []))
    assert p.returncode == 0 and not calls, p.stderr
    pins = [line.split("==") for line in p.stdout.split()]
    assert all(len(pin) == 2 for pin in pins), p.stdout
    names = [canonicalize_name(n) for n, _ in pins]
    assert len(names) == len(set(names)), "one version each: a --no-deps install breaks on two"
    reqs = _requirements()
    for name, (_, version) in zip(names, pins):
        if name in reqs:
            assert reqs[name].specifier.contains(version, prereleases=True), (name, version)
    assert {"deepspeed", "hydra-core", "hydra-submitit-launcher", "accelerate"} <= set(names)
    assert ("flash-attn-4" in names) == fa4 and ("nvidia-cutlass-dsl" in names) == fa4
    assert "torch" not in names  # the host's CUDA build stays
