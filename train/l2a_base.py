"""Training further from an L2A model: `model.base=<conversion or export dir>`.

A second stage (another length, another data mix) starts from a model that is already L2A.
Nothing is converted: the model is loaded as it is, and the L2A settings that give its
weights their meaning (window, layers, router temperature and threshold, init) are taken
from its config. A command-line override that contradicts them is refused in one line
(the trained router and local branch would be read with another meaning); a preset's value
is replaced by the model's. RoPE settings (`model.rope_theta`,
`model.max_position_embeddings`) may change: that is what a stage at another length does.
"""

from __future__ import annotations

import json
from pathlib import Path

L2A_MODEL_TYPES = ("l2a_qwen3", "l2a_qwen2")
# l2a.<key> -> the config field of an L2A model that holds it.
FROM_MODEL = {"window": "l2a_window", "layers": "l2a_layers", "init": "l2a_init",
              "router_tau": "l2a_router_tau", "router_threshold": "l2a_router_threshold"}


def l2a_base_config(base: str | None) -> dict | None:
    """The config of `base` if it is a local directory holding an L2A model, else None."""
    if not base:
        return None
    config = Path(base).expanduser() / "config.json"
    try:
        values = json.loads(config.read_text())
    except (OSError, ValueError):
        return None  # not a local L2A model (the loader reports unreadable bases)
    return values if isinstance(values, dict) and values.get("model_type") in L2A_MODEL_TYPES else None


def _explicit_keys(overrides: list[str]) -> set[str]:
    return {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}


def adopt_l2a_base(raw: dict, overrides: list[str], fail) -> None:
    """On the raw config (before validation): take the L2A settings from an L2A base;
    `fail(path, message, value)` raises the one-line config error."""
    model, l2a = raw.get("model"), raw.get("l2a")
    if not isinstance(model, dict) or not isinstance(l2a, dict) or model.get("random_base"):
        return
    config = l2a_base_config(model.get("base"))
    if config is None:
        return
    base = model["base"]
    if l2a.get("enabled", True) is False:
        fail("l2a.enabled", f"model.base {base} is an L2A model; it trains with l2a.enabled=true",
             False)
    given = _explicit_keys(overrides)
    for key, field in FROM_MODEL.items():
        have = config.get(field)
        if have is None and field != "l2a_layers":
            continue  # an older config without it: the run's value stands
        if f"l2a.{key}" in given and l2a.get(key) != have:
            fail(f"l2a.{key}", f"model.base {base} is an L2A model with {key}={have!r}; another "
                 f"value changes what its weights mean (drop the override)", l2a.get(key))
        l2a[key] = have
