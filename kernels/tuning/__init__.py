"""Launch-config tuning of the attention kernels, beside the kernels whose shipped configs it
writes (kernels/flash/config.py, or a file for `L2A_KERNEL_CONFIGS`):

- `variants`: the syntax of a config variant (`fwd:128,64,8,3+kv_desc`);
- `pick`: from a GPU sweep (`python -m bench.attention --sweep`), per pass the fastest
  variant that is as accurate (`python -m kernels.tuning.pick sweep.json --out tuned.json`);
- `resources`: the static profile of the kernels for a GPU target, compiled on any machine
  (`python -m kernels.tuning.resources`).

Like the rest of `kernels`, nothing here imports transformers or defines `__version__`.
"""
