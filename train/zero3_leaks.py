"""What DeepSpeed 0.19.8's ZeRO-3 keeps of an engine after `engine.destroy()`, released.

Two process-wide references keep a destroyed engine's module alive, and through it the
parameter partitions, the engine and its optimizer states (fp32 master weights, Adam
moments): everything a run holds between steps. A later run in the same process (the
variants of bench.train_throughput, tests, Hydra's basic multirun) then starts with the
earlier one's memory still allocated.

* `parameter_offload.FWD_MODULE_STACK`: each engine pushes its top module and never pops it;
  submodules can be left on it too (seen: a Linear of the model, after a run with activation
  checkpointing and a tiled MLP).
* `PartitionedParameterCoordinator.__params_to_release`: an unbounded `functools.lru_cache`
  on a method, keyed on (coordinator, submodule, step): it holds every coordinator (which
  holds the module) and gains entries every step.
"""

from __future__ import annotations

from torch import nn


def _params_to_release_cache():
    """The lru_cache wrapper under DeepSpeed's NVTX decorator (a closure cell), or None."""
    from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator

    fn = PartitionedParameterCoordinator.__dict__.get("_PartitionedParameterCoordinator__params_to_release")
    candidates = [fn] + [c.cell_contents for c in (getattr(fn, "__closure__", None) or ())]
    return next((f for f in candidates if hasattr(f, "cache_clear")), None)


def release_destroyed_engine(module: nn.Module) -> None:
    """Drop DeepSpeed's global references to `module` (the model given to a ZeRO-3
    `deepspeed.initialize`, after `engine.destroy()`). The release cache is cleared for
    every engine of the process: it is a cache, live engines refill it on their next step."""
    from deepspeed.runtime.zero import parameter_offload

    stack = parameter_offload.FWD_MODULE_STACK
    ours = {id(m) for m in module.modules()}
    stack[:] = [m for m in stack if id(m) not in ours]
    cache = _params_to_release_cache()
    if cache is not None:
        cache.cache_clear()
