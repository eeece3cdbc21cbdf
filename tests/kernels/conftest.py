"""Kernel tests run the Triton kernels on the CPU through the interpreter when there is no
GPU (TRITON_INTERPRET is set in tests/conftest.py, before any kernel is defined)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _skip_gpu_tests_without_cuda(request):
    if request.node.get_closest_marker("gpu") and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
