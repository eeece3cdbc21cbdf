"""Memory planning: will a training config fit on N GPUs of M GiB? (`python -m train.plan`)

`memory_model` holds the first-principles model of peak GPU memory per rank (bytes of
parameters, gradients, optimizer states, ZeRO buffers and checkpointed activations, by
sequence length, sequence-parallel size and ZeRO stage); `shape` reads a model's shape
from its config; `cli` is the command. docs/BENCHMARKS.md ("Memory model") writes the
formulas out and sets them against measured runs.
"""
