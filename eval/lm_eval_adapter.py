"""lm-evaluation-harness on L2A models. `import l2a` registers the L2A classes with
transformers' Auto factories, which is all the harness's `hf` model needs; in Python, wrap a
loaded model as its users do:

    from eval.lm_eval_adapter import hflm
    lm = hflm(model, tokenizer)          # lm_eval.models.huggingface.HFLM
    lm_eval.simple_evaluate(model=lm, tasks=[...])

The command line is lm_eval's own, after `import l2a`:

    python -m eval.lm_eval_adapter run --model hf \\
        --model_args pretrained=<export dir> max_length=131072 dtype=bfloat16 \\
        --tasks ruler --metadata '{"max_seq_lengths":[32768,131072]}' --batch_size 1

lm_eval is optional (`pip install lm-eval`); docs/EVAL.md says how to run its `ruler` group.
"""

from __future__ import annotations

import sys

from eval.errors import EvalError


def _require_lm_eval():
    try:
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise EvalError("lm_eval is not installed (pip install lm-eval)") from None
    return HFLM


def hflm(model, tokenizer, batch_size: int = 1, max_length: int | None = None, **kwargs):
    """The harness's HF model around an already loaded (L2A or dense) model."""
    import l2a  # noqa: F401  (the harness may load more models by name)
    from eval.load import max_context

    HFLM = _require_lm_eval()
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                max_length=max_length or max_context(model), **kwargs)


def main() -> None:
    import l2a  # noqa: F401

    try:
        _require_lm_eval()
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
