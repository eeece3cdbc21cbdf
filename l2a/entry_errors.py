"""The one-line reports of an entry point (`python -m train`, `train.data.prepare`, `eval`).

Hydra reports its own errors (an override typo, an unknown group option, a YAML error in
`conf/local/`, an override it cannot parse, a run directory it cannot make) as a stack
trace or a paragraph, with exit code 1. :func:`run_hydra_app` lets them reach the entry
point and prints each as the one line every other config error gets, with exit code 2
(a machine fault: 1). ``HYDRA_FULL_ERROR=1`` keeps Hydra's full report.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable

from l2a.errors import ConfigError, fault_line, first_line, is_machine_fault

BAD_CONFIG = 2  # the exit code of every bad setting
MACHINE_FAULT = 1  # a full disk, a read-only directory: the run failed, the config is fine


def _yaml_line(err) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = " ".join(p for p in (getattr(err, "context", None), getattr(err, "problem", None))
                       if p) or first_line(err)
    where = f"{mark.name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else "config"
    return f"{where}: invalid YAML ({problem})"


def _composition_line(err) -> str:
    cause = err.__cause__
    text = str(err)
    if "Could not override" in text and text.count("'") >= 2:
        key = text.split("'")[1]
        return f"{key}: unknown key (a typo? a new key is added with a leading +: +{key}=...)"
    if cause is not None:
        return f"{first_line(err).rstrip('.')}: {first_line(cause)}"
    return first_line(err)


def _missing_line(err) -> str:
    missing = getattr(err, "missing_cfg_file", "") or ""
    options = getattr(err, "options", None)
    if "/" in missing and options is not None:
        group, name = missing.rsplit("/", 1)
        known = ", ".join(options) or "none"
        return f"{group}={name}: unknown option of group {group} (known: {known})"
    return first_line(err)


def hydra_error_line(err: BaseException) -> tuple[str, int] | None:
    """(one line, exit code) for an error of composing the config or of Hydra's set-up of
    a run; None for anything else (a bug: its traceback is the report)."""
    import yaml
    from hydra.errors import (
        ConfigCompositionException,
        HydraException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(err, ConfigError):
        return str(err), BAD_CONFIG
    if isinstance(err, yaml.YAMLError):
        return _yaml_line(err), BAD_CONFIG
    if isinstance(err, MissingConfigException):
        return _missing_line(err), BAD_CONFIG
    if isinstance(err, OverrideParseException):
        return f"{err.override}: cannot parse this override ({first_line(err)})", BAD_CONFIG
    if isinstance(err, ConfigCompositionException):
        return _composition_line(err), BAD_CONFIG
    if isinstance(err, (HydraException, OmegaConfBaseException)):
        key = getattr(err, "full_key", None)
        return (f"{key}: {first_line(err)}" if key else first_line(err)), BAD_CONFIG
    if is_machine_fault(err) or (isinstance(err, OSError) and err.errno == errno.EEXIST):
        return fault_line(err), MACHINE_FAULT
    return None


def run_hydra_app(app: Callable[[], object]) -> None:
    """Call a ``@hydra.main`` app; Hydra's own errors end as one line and exit code 2."""
    keep_full = os.environ.get("HYDRA_FULL_ERROR") == "1"
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its report
    try:
        app()
    except Exception as err:  # noqa: BLE001 - sorted by hydra_error_line, else re-raised
        report = None if keep_full else hydra_error_line(err)
        if report is None:
            raise
        print(f"error: {report[0]}", file=sys.stderr, flush=True)
        sys.exit(report[1])
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous
