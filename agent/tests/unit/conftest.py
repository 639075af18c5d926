from __future__ import annotations

from collections.abc import Iterator

import pytest
from fuzzing import Figures


@pytest.fixture(scope="module")
def figures() -> Iterator[dict[str, Figures]]:
    """The fuzz tests' figures by name, reported at the end of their module."""
    found: dict[str, Figures] = {}
    yield found
    for f in found.values():
        f.report()
