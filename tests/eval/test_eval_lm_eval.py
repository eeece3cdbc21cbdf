"""The lm-evaluation-harness adapter on a local task definition: the harness's
log-likelihoods of an L2A model equal the model's own. lm_eval is a test requirement
(requirements-test.txt, installed by `make test`): missing, this file fails, not skips."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from eval_helpers import tiny_l2a

try:
    import lm_eval  # noqa: F401
except ImportError:
    pytest.fail("lm_eval is not installed: `make test` installs requirements-test.txt",
                pytrace=False)

DOCS = [{"context": "The special magic number for blue-river is: 1234567. The number is",
         "target": " 1234567"},
        {"context": "VAR ABCDE = 54321. VAR FGHIJ = VAR ABCDE. Which holds 54321?", "target": " FGHIJ"}]


def _own_loglikelihood(model, tok, context: str, target: str) -> float:
    ctx = tok(context, add_special_tokens=False).input_ids
    tgt = tok(target, add_special_tokens=False).input_ids
    ids = torch.tensor([ctx + tgt])
    with torch.no_grad():
        logp = F.log_softmax(model(ids).logits[0, :-1].float(), -1)
    return float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(tgt)))


def test_local_task_loglikelihood_matches_model(tok, tmp_path):
    from lm_eval.tasks import TaskManager

    from eval.lm_eval_adapter import hflm

    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tmp_path / "l2a_local.yaml").write_text(
        "task: l2a_local\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: loglikelihood\n"
        "doc_to_text: '{{context}}'\ndoc_to_target: '{{target}}'\n"
        "metric_list:\n  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n")
    model = tiny_l2a()
    res = lm_eval.simple_evaluate(model=hflm(model, tok, batch_size=2), tasks=["l2a_local"],
                                  task_manager=TaskManager(include_path=str(tmp_path)))
    ppl = res["results"]["l2a_local"]["perplexity,none"]
    own = [_own_loglikelihood(model, tok, d["context"], d["target"]) for d in DOCS]
    assert ppl == pytest.approx(math.exp(-sum(own) / len(own)), rel=1e-4)
