"""study.probe: teacher-forced answer scores, checked against models whose answers are
known: an oracle that puts its mass on the true next token, and a model that predicts the
same distribution everywhere."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from study.probe import answer_scores, main
from train.tiny_base import byte_tokenizer


class _Oracle(torch.nn.Module):
    """Logit 30 on the token that actually follows each position (it reads the input)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        logits = torch.zeros(*ids.shape, self.vocab)
        logits[0, :-1].scatter_(-1, ids[0, 1:, None], 30.0)
        return SimpleNamespace(logits=logits)


class _Flat(_Oracle):
    """Every token equally likely everywhere: nll = ln(vocab)."""

    def forward(self, ids):
        return SimpleNamespace(logits=torch.zeros(*ids.shape, self.vocab))


@pytest.mark.parametrize("task", ["passkey", "eval_niah_single"])
def test_an_oracle_scores_everything_and_a_flat_model_nothing(task):
    tok = byte_tokenizer()
    vocab = len(tok)
    good = answer_scores(_Oracle(vocab), tok, task, 1024, samples=2)
    assert good["exact"] == 1.0 and good["token_accuracy"] == 1.0 and good["nll"] < 1e-6
    flat = answer_scores(_Flat(vocab), tok, task, 1024, samples=2)
    assert flat["nll"] == pytest.approx(math.log(vocab), abs=1e-4)
    assert flat["exact"] == 0.0


def test_not_a_model_directory_is_one_line_and_exit_2(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "config.json" in err
