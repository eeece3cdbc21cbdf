"""Evaluation during training (`train.eval_every` > 0): a small subset of the suite
(`train.eval`, the keys of the `eval` group) on rank 0 every `eval_every` optimizer steps;
its scalars join that step's row of metrics.jsonl and wandb (`eval/<task>/<length>`,
`eval/score/<length>`, `eval/loss/<length>`, `eval/sparsity/<length>`).

Rank 0 evaluates its own full copy of the weights while the other ranks wait in the next
step's collective, so ZeRO-3 (partitioned weights) is refused up front. Inputs (lengths,
haystack, perplexity rows) are generated and checked when the trainer starts: a bad
`train.eval` fails then, not hours into the run.
"""

from __future__ import annotations

import time

from eval.config import build_eval
from eval.errors import EvalError


def check_training_eval(train_cfg):
    """The `train.eval` block as an EvalConfig (None when `train.eval_every` is 0); a bad one
    is the trainer's ConfigError, raised before anything is built."""
    from train.config import ConfigError

    if not train_cfg.eval_every:
        return None
    try:
        cfg = build_eval(train_cfg.eval or {}, "train.eval")
    except EvalError as e:
        raise ConfigError(str(e)) from None
    cfg.plots = False
    return cfg


class TrainingEval:
    def __init__(self, train_cfg, model, tokenizer, is_main: bool, zero_stage: int):
        from eval.runner import prepare
        from train.config import ConfigError

        if zero_stage == 3:
            raise ConfigError("train.eval_every: needs deepspeed.stage <= 2 (rank 0 evaluates "
                              "its own copy of the weights), got stage 3")
        self.cfg = check_training_eval(train_cfg)
        try:
            prepare(self.cfg, model, tokenizer, prefix="train.eval")
        except EvalError as e:
            raise ConfigError(str(e)) from None
        every = train_cfg.eval_every
        self.every, self.model, self.tokenizer, self.is_main = every, model, tokenizer, is_main

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def __call__(self, step: int) -> dict:
        """Scalars of the evaluation after optimizer step `step` ({} when not due / not rank 0)."""
        if not self.due(step) or not self.is_main:
            return {}
        from eval.report import summary_metrics
        from eval.runner import evaluate

        was_training = self.model.training
        self.model.eval()
        t0 = time.perf_counter()
        try:
            results = evaluate(self.model, self.tokenizer, self.cfg, log=lambda s: None,
                               prefix="train.eval")
        finally:
            self.model.train(was_training)
        out = summary_metrics(results)
        out["eval/seconds"] = time.perf_counter() - t0
        return out


def build_training_eval(train_cfg, model, tokenizer, is_main: bool, zero_stage: int):
    """The hook, or None when `train.eval_every` is 0 (the trainer's `make_evaluator`)."""
    if not train_cfg.eval_every:
        return None
    return TrainingEval(train_cfg, model, tokenizer, is_main, zero_stage)
