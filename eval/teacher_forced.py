"""Teacher-forced scores of a gold answer: the model reads prompt + answer in one forward
and each answer token is scored where the model predicts it. A continuous, low-variance
score per sample beside exact match (which needs generation and is 0 or 1 per answer):

- `answer_loglik`: the sum over answer tokens of log p(token | everything before it), in
  nats (<= 0; a 7-digit value the model cannot see costs about 7 ln 10 = 16.1 nats);
- `answer_tokens`: how many tokens the answer has (`answer_loglik / answer_tokens` is the
  mean per token);
- `token_accuracy`: the share of answer tokens that are the model's argmax;
- `answer_exact`: every answer token is the argmax (greedy decoding would write the answer
  after the prompt; generation can still differ where it stops or what it adds).

The gold answer of a RULER task is what the training format appends to its prompt
(`train.data.eval_format.answer_text`): the values after a NIAH task's answer prefix, the
variable names after variable tracking's.
"""

from __future__ import annotations

import inspect

import torch

from train.data.eval_format import answer_text


def gold_answer(task: str, answers: list[str]) -> str:
    """The text a model that answers right writes after the prompt of a RULER `task`."""
    return answer_text(task, answers)


def _answer_logits(model, ids: torch.Tensor, keep: int) -> torch.Tensor:
    """Logits of the last `keep` positions (1, keep, V). A model that takes
    `logits_to_keep` (HF causal LMs, L2A) computes only those: at 32K tokens and a 150K
    vocabulary the full logits would be 20 GB in fp32."""
    params = inspect.signature(model.forward).parameters
    kwargs = {}
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = keep
    if "use_cache" in params:
        kwargs["use_cache"] = False
    return model(ids, **kwargs).logits[:, -keep:]


@torch.no_grad()
def score_answer(model, prompt_ids: list[int], answer_ids: list[int]) -> dict:
    """The teacher-forced scores (module docstring) of `answer_ids` after `prompt_ids`."""
    if not prompt_ids or not answer_ids:
        raise ValueError(f"teacher-forced scoring needs a prompt and an answer, got "
                         f"{len(prompt_ids)} and {len(answer_ids)} tokens")
    device = next(model.parameters()).device
    n = len(answer_ids)
    ids = torch.tensor([list(prompt_ids) + list(answer_ids)], device=device)
    # Position t predicts token t + 1: the answer's tokens are predicted at the last
    # prompt position through the second-to-last answer position.
    logits = _answer_logits(model, ids, n + 1)[0, :-1].float()
    target = ids[0, len(prompt_ids):]
    token_logp = torch.log_softmax(logits, -1).gather(-1, target[:, None])[:, 0]
    hits = logits.argmax(-1) == target
    return {"answer_loglik": float(token_logp.sum()), "answer_tokens": n,
            "token_accuracy": float(hits.float().mean()), "answer_exact": bool(hits.all())}
