"""Sequence parallelism applied to a model from outside: the L2A branches' attention cores
wrapped (`apply_to_model`: Ulysses or the halo for the local window, the routed core), or
DeepSpeed's own registration for the dense baseline (`apply_to_dense_model`)."""

from __future__ import annotations

import torch

from train.parallel.groups import SequenceParallelMpu, _replaced_attention
from train.parallel.halo import HaloWindowCore
from train.parallel.routed import RoutedUlyssesCore
from train.parallel.topology import TopologyError
from train.parallel.ulysses import UlyssesCore

# How the local (sliding-window) branch runs under sequence parallelism: `halo` keeps the
# slice and exchanges the window's keys (`halo`); `ulysses` all-to-alls it
# like the global branch.
SP_WINDOW_MODES = ("halo", "ulysses")


def apply_to_model(model: torch.nn.Module, group, micro_batch_size: int, window: str = "halo") -> int:
    """Wrap the attention cores (full and routed) of every L2A branch of `model` for sequence
    parallelism over `group`; returns the number of branches wrapped. `window`
    (`train.sequence_parallel_window`): the local branches through `halo` exchange
    (train/parallel/halo.py) or Ulysses like the global ones."""
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

    from l2a.layers import L2AAttention, L2ABranchAttention

    if window not in SP_WINDOW_MODES:
        raise TopologyError(f"train.sequence_parallel_window: must be one of {', '.join(SP_WINDOW_MODES)}, got {window!r}")
    local = {id(m.local_attn) for m in model.modules() if isinstance(m, L2AAttention)}
    cfg = model.config
    n = 0
    for module in model.modules():
        if isinstance(module, L2ABranchAttention) and window == "halo" and id(module) in local:
            module.attention_core = HaloWindowCore(module.attention_core, group)
            n += 1
        elif isinstance(module, L2ABranchAttention):
            ulysses = UlyssesSPAttentionHF(
                attn=None, batch_size=micro_batch_size, attn_head_count=module.num_heads,
                attn_head_size=module.head_dim, kv_head_count=module.num_kv_heads,
                num_hidden_layers=cfg.num_hidden_layers, process_group=group,
                seq_length_is_variable=True,
            )
            module.attention_core = UlyssesCore(module.attention_core, ulysses, group)
            module.routed_attention_core = RoutedUlyssesCore(module.routed_attention_core, group)
            n += 1
    return n


def apply_to_dense_model(model: torch.nn.Module, sp: int, micro_batch_size: int):
    """The dense baseline (an HF model): DeepSpeed's own registration, which routes the
    model's attention implementation through Ulysses; returns the mpu. Packed rows then
    attend causally across documents (DeepSpeed drops the mask; flash-attention
    implementations use the gathered position ids instead)."""
    import deepspeed.runtime.sequence_parallel.parallel_state_sp as mpu
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    impl = model.config._attn_implementation
    _replaced_attention.setdefault(impl, ALL_ATTENTION_FUNCTIONS[impl])
    if mpu._SEQUENCE_PARALLEL_GROUP is not None:
        mpu._release_sequence_parallel_groups()  # register_with_transformers makes its own
    return SequenceParallelMpu(UlyssesSPAttentionHF.register_with_transformers(
        model, impl, sp, micro_batch_size, seq_length_is_variable=True))
