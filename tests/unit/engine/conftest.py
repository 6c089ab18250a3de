"""The engine's unit tests run on the fakes of one World, with real I/O forbidden."""

from __future__ import annotations

from pathlib import Path

import pytest

from support.fake_world import World


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    w = World(tmp_path)
    w.forbid_io(monkeypatch)
    return w
