"""Long-context evaluation: `python -m eval` (Hydra app, conf/eval_config.yaml).

RULER-family synthetic tasks by length and needle depth (`train.data.ruler`, shared with the data pipeline), perplexity by
context length and position (`eval.perplexity`), router sparsity of L2A models
(`eval.routing`); results.json, a printed table and PNGs in the run directory.
docs/EVAL.md describes the command line and the output.
"""
