"""The note on a ZeRO stage that buys nothing: ZeRO-3 over a single rank holds the whole model
in its one partition (ZeRO-2's memory) and still gathers and releases every parameter. The
cases follow from what each stage partitions; the trainer's printing of it is checked by the
one-rank ZeRO-3 run in test_engine_release.py."""

from __future__ import annotations

import pytest

from train.deepspeed_config import zero_stage_note


@pytest.mark.parametrize("stage,ranks,offload,noted", [
    (3, 1, "none", True),    # one partition: nothing saved, hooks paid
    (3, 2, "none", False),   # two ranks: each holds half of the parameters
    (3, 1, "cpu", False),    # parameters in CPU memory: the stage buys GPU memory
    (2, 1, "none", False),   # no per-parameter hooks to pay
    (1, 1, "none", False),
])
def test_note_only_where_zero3_partitions_nothing(stage, ranks, offload, noted):
    note = zero_stage_note(stage, ranks, offload)
    assert (note is not None) == noted
    if noted:
        assert "deepspeed=zero2" in note and "\n" not in note
