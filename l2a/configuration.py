"""L2A configurations: the Qwen2 / Qwen3 configs plus the fields of the L2A layer.

Every L2A field is prefixed ``l2a_`` so that a converted checkpoint's ``config.json`` keeps
the base model's fields untouched and readable by anyone who knows the base config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from huggingface_hub.dataclasses import strict
from transformers import Qwen2Config, Qwen3Config

L2A_INIT_MODES = ("paper", "identity")
L2A_ATTN_BACKENDS = ("auto", "torch", "triton", "flex", "fa4")


def _validate_l2a_fields(cfg) -> None:
    """Checks shared by both families; messages name the config field."""
    if cfg.l2a_window < 1:
        raise ValueError(f"l2a_window: must be >= 1, got {cfg.l2a_window}")
    if not cfg.l2a_router_tau > 0:
        raise ValueError(f"l2a_router_tau: must be > 0, got {cfg.l2a_router_tau}")
    if not 0.0 < cfg.l2a_router_threshold < 1.0:
        raise ValueError(f"l2a_router_threshold: must be in (0, 1), got {cfg.l2a_router_threshold}")
    if not 0.0 <= cfg.l2a_dense_prob <= 1.0:
        raise ValueError(f"l2a_dense_prob: must be in [0, 1], got {cfg.l2a_dense_prob}")
    if cfg.l2a_init not in L2A_INIT_MODES:
        raise ValueError(f"l2a_init: must be one of {L2A_INIT_MODES}, got {cfg.l2a_init!r}")
    if cfg.l2a_attn_backend not in L2A_ATTN_BACKENDS:
        raise ValueError(
            f"l2a_attn_backend: must be one of {L2A_ATTN_BACKENDS}, got {cfg.l2a_attn_backend!r}"
        )
    for name in ("l2a_routed_projections", "l2a_fused_elementwise"):
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"{name}: must be true or false, got {getattr(cfg, name)!r}")
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
    l2a_dense_prob: float = 0.1
    l2a_layers: list[int] | None = None
    # L2A layers that keep a global branch (router, global projections, global KV cache);
    # the other L2A layers are local-only (pruned, `python -m train.prune`). None: all of them.
    l2a_global_layers: list[int] | None = None
    l2a_init: str = "paper"
    l2a_attn_backend: str = "auto"
    # Global branch: q_proj / QK-norm / RoPE / o_proj for routed tokens only (same result;
    # off under sequence parallelism, where the routed count differs per rank).
    l2a_routed_projections: bool = False
    # The elementwise work around the branches (residual add + norm, router, QK-norm +
    # RoPE, gated add) in torch.compile'd regions (l2a/fused.py).
    l2a_fused_elementwise: bool = False

    def __post_init__(self, **kwargs):
        # Runs the family config's own __post_init__ (next in the MRO) first.
        super().__post_init__(**kwargs)
        _validate_l2a_fields(self)

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
