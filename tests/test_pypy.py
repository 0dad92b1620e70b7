"""
The start-up advice about PyPy's nursery (gourmet.pypy).
"""

from __future__ import annotations

import platform
from typing import Optional

import pytest

from gourmet.pypy import (
    RECOMMENDED_NURSERY,
    nursery_warning,
    parse_size,
    running_nursery,
)


@pytest.mark.parametrize(
    "text, size",
    [
        ("1.0MB", 2**20),
        ("512.0kB", 512 * 2**10),
        ("32.0MB", 32 * 2**20),
        ("1GB", 2**30),
        ("4096", 4096),
        ("many", None),
        ("1.2.3MB", None),
        ("", None),
    ],
)
def test_sizes_as_pypy_prints_them(text: str, size: Optional[int]) -> None:
    assert parse_size(text) == size


def test_a_small_nursery_gets_advice_naming_the_variable() -> None:
    warning = nursery_warning("1.0MB")
    assert warning is not None
    assert f"PYPY_GC_NURSERY={RECOMMENDED_NURSERY}" in warning
    assert "1.0MB" in warning


@pytest.mark.parametrize("nursery", ["32.0MB", "8.0MB", None, "unreadable"])
def test_no_advice_for_a_large_nursery_or_on_cpython(nursery: Optional[str]) -> None:
    assert nursery_warning(nursery) is None


def test_the_running_nursery_is_read_on_pypy_only() -> None:
    nursery = running_nursery()
    if platform.python_implementation() == "PyPy":
        assert nursery is not None and parse_size(nursery) is not None
    else:
        assert nursery is None
