"""Helpers shared by the integration tests (importable as `support`)."""

from collections.abc import Callable
from pathlib import Path

SpecMaker = Callable[..., Path]
"""make_spec("v2", "name", **{"dotted.key": value}) -> path of a spec for this test's port."""
