"""L2A configurations: the Qwen2 / Qwen3 configs plus the fields of the L2A layer.

Every L2A field is prefixed ``l2a_`` so that a converted checkpoint's ``config.json`` keeps
the base model's fields untouched and readable by anyone who knows the base config.

The config holds what the weights mean (the model's identity), never how a forward is run:
backends and other runtime switches are ``model.l2a_runtime`` (l2a/runtime.py).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from huggingface_hub.dataclasses import strict
from transformers import Qwen2Config, Qwen3Config

from l2a.validate import L2A_INIT_MODES, check_l2a_fields

from .runtime import L2A_ATTN_BACKENDS, LEGACY_RUNTIME_KEYS  # noqa: F401  (re-exported)

__all__ = ["L2A_ATTN_BACKENDS", "L2A_INIT_MODES", "L2AQwen2Config", "L2AQwen3Config"]
logger = logging.getLogger(__name__)

# The identity fields (runtime options live on model.l2a_runtime, l2a/runtime.py).
_L2A_FIELDS = ("window", "router_tau", "router_threshold", "init", "layers")


def _validate_l2a_fields(cfg) -> None:
    """The rules of l2a/validate.py, named by the config field (``l2a_window``); then the
    ones that need the model's shape."""
    check_l2a_fields({k: getattr(cfg, f"l2a_{k}") for k in _L2A_FIELDS}, lambda k: f"l2a_{k}")
    if cfg.l2a_layers is not None:
        bad = [i for i in cfg.l2a_layers if not 0 <= i < cfg.num_hidden_layers]
        if bad:
            raise ValueError(
                f"l2a_layers: indices {bad} out of range for {cfg.num_hidden_layers} layers"
            )
    if cfg.l2a_global_layers is not None:
        bad = [i for i in cfg.l2a_global_layers if not cfg.is_l2a_layer(i)]
        if bad:
            raise ValueError(
                f"l2a_global_layers: {bad} are not L2A layers (l2a_layers={cfg.l2a_layers}, "
                f"{cfg.num_hidden_layers} layers)"
            )


@dataclass
class L2AConfigMixin:
    """The L2A fields and accessors, shared by the configs of both families."""

    l2a_window: int = 4095
    l2a_router_tau: float = 0.1
    l2a_router_threshold: float = 0.5
    l2a_layers: list[int] | None = None
    # L2A layers that keep a global branch (router, global projections, global KV cache);
    # the other L2A layers are local-only (pruned, `python -m train.prune`). None: all of them.
    l2a_global_layers: list[int] | None = None
    l2a_init: str = "paper"

    def __post_init__(self, **kwargs):
        # A config written before runtime switches left it: they are dropped (the model
        # runs with the runtime defaults, whatever it was trained with), with a note.
        legacy = {k: kwargs.pop(k) for k in LEGACY_RUNTIME_KEYS if k in kwargs}
        if legacy:
            logger.warning("l2a: ignoring runtime settings saved in an older config (%s); set "
                        "them on the loaded model as model.l2a_runtime (l2a/runtime.py)",
                        ", ".join(f"{k}={v!r}" for k, v in legacy.items()))
        # Runs the family config's own __post_init__ (next in the MRO) first.
        super().__post_init__(**kwargs)
        _validate_l2a_fields(self)

    def __setattr__(self, name, value):
        # Written into config.json it would become part of every checkpoint and export.
        if name in LEGACY_RUNTIME_KEYS:
            raise AttributeError(
                f"{name} is a runtime option, not part of the model config: set "
                f"model.l2a_runtime.{name[len('l2a_'):]} (l2a/runtime.py)"
                if name != "l2a_dense_prob" else
                "l2a_dense_prob is a training setting (l2a.dense_prob), not part of the model config")
        super().__setattr__(name, value)

    def is_l2a_layer(self, layer_idx: int) -> bool:
        """The layer has the L2A block (local branch, and a global branch unless pruned);
        layers outside ``l2a_layers`` keep the base model's full attention."""
        return self.l2a_layers is None or layer_idx in self.l2a_layers

    def has_global_branch(self, layer_idx: int) -> bool:
        """An L2A layer with router and global branch (not pruned to local-only)."""
        return self.is_l2a_layer(layer_idx) and (
            self.l2a_global_layers is None or layer_idx in self.l2a_global_layers
        )

    @property
    def l2a_logit_threshold(self) -> float:
        """Router logit at or above which a token is routed: ``p >= threshold`` written on
        the logit, so inference needs no sigmoid and ``p`` rounding cannot flip a decision."""
        t = self.l2a_router_threshold
        return self.l2a_router_tau * math.log(t / (1.0 - t))


@strict
class L2AQwen3Config(L2AConfigMixin, Qwen3Config):
    """Qwen3 (QK-norm, no bias) with L2A layers."""

    model_type = "l2a_qwen3"


@strict
class L2AQwen2Config(L2AConfigMixin, Qwen2Config):
    """Qwen2 / Qwen2.5 (q/k/v bias, no QK-norm) with L2A layers."""

    model_type = "l2a_qwen2"
