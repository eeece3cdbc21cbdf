"""Teacher-forced answer scores (eval/teacher_forced.py) against models whose answers are
known: an oracle of the next token, a flat model, one right on the first k answer tokens;
and in the suite: the extra samples are scored but not generated, every score equals the
one computed from the model's full logits."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from eval_helpers import tiny_l2a

from eval.config import EvalConfig, PerplexityConfig, TeacherForcedConfig
from eval.runner import evaluate
from eval.teacher_forced import gold_answer, score_answer
from l2a.errors import ConfigError

VOCAB = 50


class _NextToken(torch.nn.Module):
    """Logit 30 on the token that follows each position (it reads its input), 0 elsewhere;
    wrong (logit 30 elsewhere) from answer token `right_first` on. Takes `logits_to_keep`
    as HF models do."""

    def __init__(self, right_first: int | None = None, prompt_len: int = 0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.right_first, self.prompt_len = right_first, prompt_len

    def forward(self, ids, logits_to_keep: int = 0, use_cache=None):
        nxt = torch.roll(ids[0], -1)
        if self.right_first is not None:  # positions predicting answer token >= right_first
            start = self.prompt_len - 1 + self.right_first
            nxt[start:] = (nxt[start:] + 1) % VOCAB
        logits = torch.zeros(1, ids.shape[1], VOCAB)
        logits[0].scatter_(-1, nxt[:, None], 30.0)
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


class _Flat(torch.nn.Module):
    """Every token equally likely everywhere; no `logits_to_keep` (the full logits)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        return SimpleNamespace(logits=torch.zeros(1, ids.shape[1], VOCAB))


PROMPT, ANSWER = [3, 1, 4, 1, 5, 9, 2, 6], [7, 8, 9, 10]


def test_the_next_token_oracle_scores_every_answer_token():
    s = score_answer(_NextToken(), PROMPT, ANSWER)
    # log p = 30 - log(e^30 + 49): about -49 e^-30 per token
    assert s["answer_loglik"] == pytest.approx(0.0, abs=1e-9) and s["answer_tokens"] == 4
    assert s["token_accuracy"] == 1.0 and s["answer_exact"] is True


def test_a_flat_model_costs_log_vocab_per_token_and_gets_none_right():
    s = score_answer(_Flat(), PROMPT, ANSWER)
    assert s["answer_loglik"] == pytest.approx(-4 * math.log(VOCAB), rel=1e-6)
    assert s["token_accuracy"] == 0.0 and s["answer_exact"] is False  # argmax of ties: id 0


@pytest.mark.parametrize("k", [0, 1, 3])
def test_right_on_the_first_k_answer_tokens(k):
    s = score_answer(_NextToken(right_first=k, prompt_len=len(PROMPT)), PROMPT, ANSWER)
    assert s["token_accuracy"] == k / 4 and s["answer_exact"] is False
    # each wrong token: log(1 / (e^30 + 49)) = -30 - log(1 + 49 e^-30)
    assert s["answer_loglik"] == pytest.approx(-30.0 * (4 - k), abs=1e-6)


def test_empty_answer_is_an_error():
    with pytest.raises(ValueError, match="needs a prompt and an answer"):
        score_answer(_Flat(), PROMPT, [])


def test_gold_answer_is_what_training_appends():
    assert gold_answer("niah_multivalue", ["1", "22"]) == " 1, 22."
    assert gold_answer("variable_tracking", ["AB", "CD"]) == " AB CD"


def _cfg(**kw):
    base = dict(tasks=["niah_single", "variable_tracking"], lengths=[1024], depths=[0.5],
                samples=1, max_new_tokens=8, perplexity=PerplexityConfig(data=None), plots=False,
                teacher_forced=TeacherForcedConfig(enabled=True, samples=3))
    base.update(kw)
    return EvalConfig(**base).check()


def test_suite_scores_extra_samples_teacher_forced_only(tok):
    model = tiny_l2a()
    res = evaluate(model, tok, _cfg(), log=lambda s: None)
    recs = res["samples"]
    assert [(r["task"], r["index"], r["generated"]) for r in recs] == [
        (t, i, i == 0) for t in ("niah_single", "variable_tracking") for i in range(3)]
    for r in recs:
        assert (r["score"] is None) == (not r["generated"])
        assert (r["prediction"] is None) == (not r["generated"])
        # Only a generation's prefill is routing: the teacher-forced forwards leave none.
        assert ("layer_sparsity" in r) == r["generated"]
    # Every score from the model's full logits, computed here.
    from train.data.ruler import generate
    from train.data.tokenizer import TextEncoder

    enc = TextEncoder(tok)
    for r in recs:
        s = generate(r["task"], 1024, enc, seed=0, index=r["index"], depth=r["depth"],
                     new_tokens=8)
        prompt = enc.encode([s.prompt])[0].tolist()
        answer = enc.encode([gold_answer(s.task, s.answers)])[0].tolist()
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logits = model(ids, use_cache=False).logits[0].float()
        logp = torch.log_softmax(logits[len(prompt) - 1:-1], -1)
        want = float(sum(logp[j, a] for j, a in enumerate(answer)))
        assert r["answer_tokens"] == len(answer)
        assert r["answer_loglik"] == pytest.approx(want, rel=1e-4, abs=1e-4)
        hits = (logits[len(prompt) - 1:-1].argmax(-1) == torch.tensor(answer)).float().mean()
        assert r["token_accuracy"] == pytest.approx(float(hits))
    cells = {(c["task"], c["depth"]): c for c in res["tasks"]}
    c = cells[("niah_single", "all")]
    assert c["samples"] == 1 and c["teacher_forced"]["samples"] == 3
    niah = [r for r in recs if r["task"] == "niah_single"]
    assert c["teacher_forced"]["answer_loglik_per_token"] == pytest.approx(
        sum(r["answer_loglik"] for r in niah) / sum(r["answer_tokens"] for r in niah))


def test_off_by_default_and_no_fewer_than_the_generated_samples(tok):
    res = evaluate(tiny_l2a(), tok, _cfg(teacher_forced=TeacherForcedConfig()), log=lambda s: None)
    assert len(res["samples"]) == 2 and not any("answer_loglik" in r for r in res["samples"])
    with pytest.raises(ConfigError, match=r"^eval\.teacher_forced\.samples: must be at least "
                                          r"eval\.samples \(2: .*got 1$"):
        EvalConfig(samples=2, teacher_forced=TeacherForcedConfig(enabled=True, samples=1)).check()
