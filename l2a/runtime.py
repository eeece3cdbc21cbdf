"""How an L2A model runs, apart from what it is.

The config of an L2A model (``config.json``) says what its weights mean: shape, window,
router temperature and threshold, which layers are L2A layers. How a forward is computed
(which attention kernels, whether the global branch projects routed tokens only, whether
the elementwise work is compiled) gives the same result whichever way it is set, so it is
not part of the model's identity: it lives on the loaded model as ``model.l2a_runtime`` and
is never written into a config, a checkpoint or an export.

    model = AutoModelForCausalLM.from_pretrained(path)      # after `import l2a`
    model.l2a_runtime.attn_backend = "triton"               # or: set_runtime(model, ...)

Configs written before this split carried these switches as ``l2a_attn_backend``,
``l2a_routed_projections``, ``l2a_fused_elementwise`` (and ``l2a_dense_prob``, a training
setting): such a config still loads; the keys are dropped with a note and the model runs
with the defaults below, so an export loads the same whatever it was trained with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .validate import L2A_ATTN_BACKENDS, L2A_ROUTED_ROWS

# Config keys of older checkpoints that are runtime (or training) settings, not identity.
LEGACY_RUNTIME_KEYS = ("l2a_attn_backend", "l2a_routed_projections", "l2a_fused_elementwise",
                       "l2a_dense_prob")


@dataclass
class L2ARuntime:
    """Runtime options of an L2A model; every assignment is checked."""

    # auto | torch | triton | flex | fa4 (kernels/backends.py); auto picks per device.
    attn_backend: str = "auto"
    # Global branch: q_proj / QK-norm / RoPE / o_proj for routed tokens only (same result;
    # training, uncached forwards and prefills longer than a decoding step).
    routed_projections: bool = False
    # With routed_projections: `count` (the compacted queries are the routed count R of
    # rows, read from the device once per layer and forward: a host synchronisation) or
    # `capacity` (T rows, no host read; the projections cost the full ones, the attention
    # what R rows cost). No effect without routed_projections.
    routed_rows: str = "count"
    # The elementwise work around the branches (residual add + norm, router, QK-norm +
    # RoPE, gated add) in torch.compile'd regions (l2a/fused.py).
    fused_elementwise: bool = False

    def __setattr__(self, name: str, value) -> None:
        if name not in {f.name for f in dataclasses.fields(L2ARuntime)}:
            raise AttributeError(f"l2a runtime: unknown option {name!r}")
        if name == "attn_backend" and value not in L2A_ATTN_BACKENDS:
            raise ValueError(f"attn_backend: must be one of {L2A_ATTN_BACKENDS}, got {value!r}")
        if name == "routed_rows" and value not in L2A_ROUTED_ROWS:
            raise ValueError(f"routed_rows: must be one of {L2A_ROUTED_ROWS}, got {value!r}")
        if name in ("routed_projections", "fused_elementwise") and not isinstance(value, bool):
            raise ValueError(f"{name}: must be true or false, got {value!r}")
        super().__setattr__(name, value)


def set_runtime(model, **options) -> L2ARuntime:
    """Set runtime options on a loaded L2A model (the causal LM or its decoder stack)."""
    runtime = model.l2a_runtime
    for name, value in options.items():
        setattr(runtime, name, value)
    return runtime
