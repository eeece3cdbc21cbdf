"""Suite-wide setup (tests/ and study/tests/). Without a GPU the Triton kernels run under the interpreter, and
TRITON_INTERPRET must be set before any kernel is defined: `import l2a` (the data, model
and trainer tests) imports the kernels too, so it is set here, before any test module."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
