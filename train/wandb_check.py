"""Whether wandb can log online, decided before any work.

wandb asked to be online without credentials or without a reachable server otherwise ends
the run in a traceback after its init timeout (90 s by default), with the model built. Here:
explicitly online (``train.wandb.mode=online`` or ``WANDB_MODE=online``) and unable -> a
one-line error before anything is built; online only because ``WANDB_API_KEY`` is set ->
a one-line warning and offline logging (``wandb sync <run dir>/wandb`` uploads it later).
"""

from __future__ import annotations

import netrc
import os
import socket
from urllib.parse import urlparse

from l2a.errors import ConfigError

DEFAULT_BASE_URL = "https://api.wandb.ai"


def _base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


def has_credentials(base_url: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        return netrc.netrc(path).authenticators(urlparse(base_url).hostname or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def unreachable(base_url: str, timeout: float) -> str | None:
    """Why the server cannot be reached (one line), or None when a connection opens."""
    url = urlparse(base_url)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as e:
        return e.strerror or str(e) or type(e).__name__
    return None


def resolve_mode(configured: str | None, timeout: float) -> tuple[str, str | None]:
    """(the mode to log in, a warning or None); ConfigError when online was asked for
    explicitly and cannot work."""
    explicit = configured or os.environ.get("WANDB_MODE")
    mode = explicit or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    if mode != "online":
        return mode, None
    base_url = _base_url()
    why = (None if has_credentials(base_url) else
           "no wandb credentials (WANDB_API_KEY or `wandb login`)")
    if why is None:
        reason = unreachable(base_url, timeout)
        why = None if reason is None else f"cannot reach {base_url} ({reason})"
    if why is None:
        return "online", None
    if explicit:
        where = "train.wandb.mode" if configured else "WANDB_MODE"
        raise ConfigError(f"{where}: online, but {why}; set train.wandb.mode=offline (and "
                          f"`wandb sync` later) or fix the connection")
    return "offline", f"wandb: {why}; logging offline (upload later with wandb sync)"
