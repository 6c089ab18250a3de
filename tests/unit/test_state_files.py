"""The daemon's state files are its owner's alone, including those an older daemon left 0644."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard.paths import StatePaths
from shipyard.server.state_files import UMASK, lock_down


@pytest.fixture
def restore_umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_lock_down_tightens_old_files_and_sets_the_umask(tmp_path: Path, restore_umask: None) -> None:
    paths = StatePaths(tmp_path / "state").ensure()
    old = [paths.db, paths.root / "state.db-wal", paths.daemon_log, paths.router_log("shop"),
           paths.router_table("shop")]
    for f in old:
        f.write_text("x")
        os.chmod(f, 0o644)
    image_file = paths.images / "objects" / "ab"
    image_file.parent.mkdir()
    image_file.write_text("release file")
    os.chmod(image_file, 0o644)
    (paths.root / "link").symlink_to("/etc/hostname")

    lock_down(paths)

    assert [oct(mode(f)) for f in old] == [oct(0o600)] * len(old)
    for d in (paths.root, paths.images, paths.instances, paths.routers):
        assert mode(d) == 0o700, d
    assert mode(image_file) == 0o644       # image contents keep their manifest's modes
    new = paths.root / "created-after"
    new.write_text("y")
    assert mode(new) == 0o600 and os.umask(UMASK) == UMASK
