"""study.skill_check on a tiny random base: the batches are the task's samples, the
fine-tune moves the probe's answer loss, and bad input is one line and exit 2."""

from __future__ import annotations

import json

from study.skill_check import main, train_batch
from train.tiny_base import build_tiny_base, byte_tokenizer


def test_batches_are_the_tasks_samples():
    tok = byte_tokenizer()
    x = train_batch(tok, "passkey", 256, step=3, batch=2)
    assert x.shape[0] == 2 and x.shape[1] <= 256
    text = tok.decode(x[0])
    assert "pass key" in text
    # Different steps draw different samples (the index moves with the step).
    assert tok.decode(train_batch(tok, "passkey", 256, step=4, batch=2)[0]) != text


def test_fine_tune_lowers_the_answer_loss_and_writes_the_rows(tmp_path):
    base = build_tiny_base(tmp_path / "base")
    out = tmp_path / "skill.json"
    assert main([str(base), "--task", "passkey", "--length", "256", "--steps", "6",
                 "--batch", "2", "--lr", "3e-3", "--probe-every", "3", "--samples", "2",
                 "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["step"] for r in res["rows"]] == [0, 3, 6]
    first, last = res["rows"][0], res["rows"][-1]
    # A random tiny model starts near ln(vocab) per answer token; six steps of the answer
    # format (digits after "The pass key is") take a part of that away.
    assert first["nll"] > 4.0 and last["nll"] < first["nll"] - 0.5, (first, last)


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err
    base = build_tiny_base(tmp_path / "base")
    capsys.readouterr()  # the build's progress bars
    assert main([str(base), "--task", "no_such_task", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no_such_task" in err
