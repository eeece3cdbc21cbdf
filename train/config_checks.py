"""Checks of values that are legal alone but not together, and of settings that would be
silently ignored. They run after every group is validated (train/config.py), before
anything is built: an error is a one-line ConfigError naming the key to change, a warning
is a line the trainer prints (and writes to train.log) before it starts.
"""

from __future__ import annotations

import json
import os
from typing import Any

from l2a.validate import fail


def _model_context(model) -> tuple[int | None, str]:
    """The model's max positions and the key that sets it; (None, '') when unknown without
    loading (a hub id)."""
    if model.max_position_embeddings is not None:
        return model.max_position_embeddings, "model.max_position_embeddings"
    if model.random_base is not None:
        n = model.random_base.get("max_position_embeddings")
        return (n, "model.random_base.max_position_embeddings") if n else (None, "")
    config = os.path.join(os.path.expanduser(model.base), "config.json")
    try:
        with open(config) as f:
            n = json.load(f).get("max_position_embeddings")
    except (OSError, ValueError):
        return None, ""  # a hub id, or a directory build_model reports on
    return (n, f"max_position_embeddings of {config}; or set model.max_position_embeddings") \
        if isinstance(n, int) else (None, "")


def check_together(run: Any) -> list[str]:
    """Raise for a combination that cannot work or a setting that would be ignored; return
    the warnings."""
    warnings: list[str] = []
    data, model, l2a, train = run.data, run.model, run.l2a, run.train
    seq_len = getattr(data, "seq_len", None)
    if seq_len is not None:
        context, key = _model_context(model)
        if context is not None and seq_len > context:
            fail("data.seq_len", f"{seq_len} is above the model's context ({key}={context})"
                 if key.startswith("model.") else f"{seq_len} is above the model's context "
                 f"({context}, the {key})")
        if l2a.enabled and seq_len <= l2a.window:
            warnings.append(
                f"data.seq_len={seq_len} is within l2a.window={l2a.window}: the local branch "
                f"already sees every token, so the router learns nothing useful (set "
                f"l2a.window below data.seq_len)")
    # data.tokenizer against the model's: train.data.tokenizer.check_same_tokenizer, once
    # the model's tokenizer is loaded (the same tokenizer may be named two ways).
    # Settings that nothing would read.
    if train.global_batch_size is not None and train.grad_accum_steps != 1:
        fail("train.grad_accum_steps", "is derived from train.global_batch_size when that is "
             "set; set one of them", train.grad_accum_steps)
    if not l2a.enabled and l2a.sparsity_target is not None:
        fail("l2a.sparsity_target", "has no effect with l2a.enabled=false (the dense baseline "
             "has no router)", l2a.sparsity_target)
    if train.export and not train.save_final:
        fail("train.save_final", "false has no effect while train.export=true (the export is "
             "made from the final checkpoint)")
    upsample = getattr(data, "upsample_long", None)
    if upsample is not None and (upsample.min_tokens > 0) != (upsample.factor > 1.0):
        unused = "factor" if upsample.min_tokens == 0 else "min_tokens"
        fail(f"data.upsample_long.{unused}", "has no effect unless both "
             "data.upsample_long.min_tokens > 0 and data.upsample_long.factor > 1",
             getattr(upsample, unused))
    return warnings
