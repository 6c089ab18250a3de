"""Fixtures every test directory shares."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard.images.build import remove_dir


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A private temp dir with a short path (unix socket paths are limited to 108 bytes),
    removed afterwards even when read-only image trees were written into it."""
    path = Path(tempfile.mkdtemp(prefix="sy"))
    try:
        yield path
    finally:
        remove_dir(path)
