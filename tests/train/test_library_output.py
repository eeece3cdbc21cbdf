"""Library noise stays off the console unless train.verbose=true: DeepSpeed's warnings,
the compiler probes' INFO records, per-shard progress bars."""

from __future__ import annotations

import logging

import pytest

from train.library_output import set_library_output, verbose_on_command_line


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())


@pytest.fixture
def restore():
    yield
    set_library_output(True)  # the process as it was: nothing filtered


def test_quiet_by_default_and_verbose_on_request(restore):
    from transformers.utils import logging as hf_logging

    ds, seen = logging.getLogger("DeepSpeed"), _Collect()
    ds.addHandler(seen)
    ds.setLevel(logging.INFO)  # as DeepSpeed configures it at import
    try:
        set_library_output(False)
        ds.warning("Setting accelerator to CPU.")
        ds.error("a real error")
        assert seen.records == ["a real error"]
        assert not logging.getLogger("compilers.C.base").isEnabledFor(logging.INFO)
        assert not hf_logging.is_progress_bar_enabled()
        set_library_output(True)
        ds.warning("Setting accelerator to CPU.")
        assert seen.records[-1] == "Setting accelerator to CPU."
        assert logging.getLogger("compilers").level == logging.NOTSET  # no longer held back
        assert hf_logging.is_progress_bar_enabled()
    finally:
        ds.removeHandler(seen)


def test_verbose_flag_is_read_from_the_command_line():
    assert verbose_on_command_line(["experiment=tiny", "train.verbose=true"])
    assert verbose_on_command_line(["+train.verbose=True"])
    assert not verbose_on_command_line(["experiment=tiny"])
    assert not verbose_on_command_line(["train.verbose=false"])


# What `python -m train` does before its run: the output setting, then DeepSpeed's
# communication backend (whose shared-memory op prints a line when it loads, on CPU).
LAUNCH = ("import sys\n"
          "from train.library_output import set_library_output\n"
          "set_library_output(sys.argv[1] == 'verbose')\n"
          "from train.distributed import init_distributed\n"
          "init_distributed()\n"
          "print('launched')\n")


def _launch(mode: str) -> str:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([sys.executable, "-c", LAUNCH, mode], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "launched" in proc.stdout, proc.stderr[-2000:]
    return proc.stdout + proc.stderr


def test_deepspeed_op_line_only_when_verbose():
    shown = _launch("verbose")
    if "built successfully" not in shown:
        pytest.skip("DeepSpeed's shared-memory op does not build here (no compiler): no line")
    assert "deepspeed_shm_comm_op built successfully" in shown
    quiet = _launch("quiet")
    assert "built successfully" not in quiet and "Setting accelerator" not in quiet, quiet


CONSOLIDATE = ("import sys\n"
               "from train.library_output import set_library_output\n"
               "set_library_output(sys.argv[1] == 'verbose')\n"
               "from train.export import _consolidated_state_dict\n"
               "from pathlib import Path\n"
               "assert _consolidated_state_dict(Path(sys.argv[2]))\n"
               "print('consolidated')\n")


def test_export_consolidation_bars_only_when_verbose(base_overrides, tmp_path):
    """An export at the end of a run consolidates the DeepSpeed state through zero_to_fp32,
    whose tqdm bars ("Loading checkpoint shards") reached the console of every run. In a
    fresh process, as in a run: the setting first, DeepSpeed's module imported later."""
    import subprocess
    import sys

    from train_helpers import ROOT, run_in_process

    from train.checkpoint import latest_complete

    code, _ = run_in_process(base_overrides + ["train.max_steps=1", "train.ckpt_every=0"],
                             tmp_path / "run")
    assert code == 0
    ckpt = str(latest_complete(tmp_path / "run"))
    for mode in ("quiet", "verbose"):
        proc = subprocess.run([sys.executable, "-c", CONSOLIDATE, mode, ckpt], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert "consolidated" in proc.stdout, proc.stderr[-2000:]
        assert ("Loading checkpoint shards" in proc.stderr) == (mode == "verbose"), proc.stderr
