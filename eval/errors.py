"""The one error type of the evaluation: a bad config, model, checkpoint or data source.
Its message is one line that names what to fix (`eval.lengths.2: ...`)."""


class EvalError(ValueError):
    pass
