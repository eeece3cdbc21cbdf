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
