"""Fixtures of the benchmark tests (tests of bench/): the tiny dense Qwen bases that the
model tests build (tests/l2a/conftest.py, loaded by path: one definition of them)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "l2a_test_bases", Path(__file__).resolve().parent.parent / "l2a" / "conftest.py")
_bases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bases)


@pytest.fixture
def make_base():
    return _bases.tiny_base
