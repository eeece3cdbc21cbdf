"""What libraries print on the console: by default only their errors, so that a run's own
lines (configuration, data statistics, progress, the error that ended it) are what a user
reads; ``train.verbose=true`` shows everything.

Quieted by default: DeepSpeed's log records below ERROR (its "Setting accelerator to CPU"
warning at import, its op-builder chatter), the line DeepSpeed prints (a plain `print`, no
logger) when its communication backend loads the shared-memory op on CPU ("DeepSpeed
deepspeed.ops.comm.deepspeed_shm_comm_op built successfully"), the compiler probes DeepSpeed
runs (INFO records of the `compilers` loggers, through Hydra's console handler), and the
per-shard progress bars of transformers, huggingface_hub, datasets and DeepSpeed's
`zero_to_fp32` (loading, writing and consolidating checkpoints).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import sys

# DeepSpeed sets its logger's level itself (a filter survives that); the compiler probes log
# on child loggers (`compilers.C.base`), which inherit their parent's level.
_FILTERED_LOGGERS = {"DeepSpeed": logging.ERROR}
_LEVELLED_LOGGERS = {"compilers": logging.WARNING}


class _BelowLevel(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


def verbose_on_command_line(argv: list[str] | None = None) -> bool:
    """`train.verbose=true` among the overrides: known before the config is composed, so
    that import-time output (DeepSpeed's accelerator warning) follows it too."""
    return any(a.lstrip("+").lower() in ("train.verbose=true", "train.verbose=1")
               for a in (sys.argv[1:] if argv is None else argv))


_VERBOSE = {"on": True}  # nothing is held back until set_library_output says otherwise


def _without_stdout(build):
    @functools.wraps(build)
    def quiet():
        with contextlib.redirect_stdout(io.StringIO()):  # its errors still raise
            return build()

    quiet.loud = build
    return quiet


def _without_bar(bar):
    quiet = functools.partial(bar, disable=True)
    quiet.loud = bar
    return quiet


def quiet_deepspeed() -> None:
    """Apply the setting to what DeepSpeed prints without a logger; call after importing the
    module concerned: the line its shared-memory op prints when the communication backend
    starts (`deepspeed.init_distributed`), and the per-shard progress bars of
    `zero_to_fp32` (an export's consolidation)."""
    comm = sys.modules.get("deepspeed.comm.torch")
    build = getattr(comm, "build_shm_op", None)
    if build is not None:
        build = getattr(build, "loud", build)
        comm.build_shm_op = build if _VERBOSE["on"] else _without_stdout(build)
    zero_to_fp32 = sys.modules.get("deepspeed.utils.zero_to_fp32")
    bar = getattr(zero_to_fp32, "tqdm", None)
    if bar is not None:
        bar = getattr(bar, "loud", bar)
        zero_to_fp32.tqdm = bar if _VERBOSE["on"] else _without_bar(bar)


def set_library_output(verbose: bool) -> None:
    """Quiet (the default) or verbose library output; may be called again to change it."""
    _VERBOSE["on"] = verbose
    quiet_deepspeed()  # where DeepSpeed is imported already
    for name, level in _FILTERED_LOGGERS.items():
        logger = logging.getLogger(name)  # the same object the library configures later
        for f in [f for f in logger.filters if isinstance(f, _BelowLevel)]:
            logger.removeFilter(f)
        if not verbose:
            logger.addFilter(_BelowLevel(level))
    for name, level in _LEVELLED_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else level)
    # Progress bars: environment variables for the libraries not imported yet, their own
    # switches for those that are.
    value = "0" if verbose else "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = value
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = value
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = value
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.enable_progress_bar() if verbose else hf_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        enable_progress_bars() if verbose else disable_progress_bars()
    if "datasets" in sys.modules:
        import datasets

        datasets.enable_progress_bars() if verbose else datasets.disable_progress_bars()
