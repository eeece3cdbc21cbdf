"""DeepSpeed's sequence-parallel process groups, as the `mpu` of `deepspeed.initialize`."""

from __future__ import annotations

# Attention functions of transformers that `apply.apply_to_dense_model` replaced (restored
# by `release_groups`).
_replaced_attention: dict = {}


class SequenceParallelMpu:
    """DeepSpeed's `parallel_state_sp` module as the `mpu` of `deepspeed.initialize`, saying
    that there is no tensor parallelism. The module aliases "model parallel" to sequence
    parallel, so DeepSpeed 0.19.8 writes `tp_degree = N` into a checkpoint that has one
    model-state file, and `ds_to_universal` then refuses it (file count 1 != tp 2). Every
    other query goes to the module (the SP checks look for `initialize_sequence_parallel`)."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        return getattr(self._module, name)

    @staticmethod
    def get_tensor_model_parallel_world_size() -> int:
        return 1

    @staticmethod
    def get_tensor_model_parallel_rank() -> int:
        return 0


def init_groups(sp: int) -> SequenceParallelMpu:
    """DeepSpeed's SP groups (ranks [i*sp, (i+1)*sp) per group); returns the mpu."""
    import deepspeed.runtime.sequence_parallel.parallel_state_sp as mpu

    if mpu._SEQUENCE_PARALLEL_GROUP is not None:
        if mpu.get_sequence_parallel_world_size() == sp:
            return SequenceParallelMpu(mpu)
        mpu._release_sequence_parallel_groups()  # another run in this process used another N
    mpu.initialize_sequence_parallel(sp)
    return SequenceParallelMpu(mpu)


def release_groups() -> None:
    """Forget the SP mpu (several runs in one process: a later one without SP)."""
    from deepspeed.utils import groups
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    groups.mpu = None
    while _replaced_attention:
        impl, fn = _replaced_attention.popitem()
        ALL_ATTENTION_FUNCTIONS[impl] = fn

