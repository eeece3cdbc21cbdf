"""Fixtures of the evaluation tests: the byte tokenizer, both Qwen families."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tok():
    from train.data import build_byte_tokenizer

    return build_byte_tokenizer()


@pytest.fixture(params=["qwen3", "qwen2"])
def family(request):
    return request.param
