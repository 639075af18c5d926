from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import Lab
from sites import RecoverySites, TwoSites


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture
def sites(tmp_path: Path) -> Iterator[TwoSites]:
    sites = TwoSites(tmp_path)
    try:
        sites.start()
        yield sites
    finally:
        sites.stop()


@pytest.fixture
def recovery_sites(tmp_path: Path) -> Iterator[RecoverySites]:
    sites = RecoverySites(tmp_path)
    try:
        sites.start()
        yield sites
    finally:
        sites.stop()
