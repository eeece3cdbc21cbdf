"""Names of the training tasks in the evaluation's format, importable without their
generators (the data config validates `data.synthetic.tasks` against them, and the
generators import the tokenizer, which imports the config)."""

EVAL_FORMAT_PREFIX = "eval_"
# The evaluation's retrieval tasks (the method study scores these).
EVAL_FORMAT_TASKS = tuple(EVAL_FORMAT_PREFIX + t for t in (
    "niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "variable_tracking"))
