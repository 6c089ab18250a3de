"""The state directory holds the API token, the state DB (specs, audit log, events) and the
daemon's log: only its owner may read any of it. The directory is 0700; every file the
daemon creates is 0600 too (umask 077, inherited by routers and instances), so that moving
or sharing the directory, or a mistaken chmod of it, does not expose them. Image files keep
the modes their manifest gives them (only the exec bit matters) inside the 0700 tree."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from shipyard.paths import StatePaths

UMASK = 0o077


def lock_down(paths: StatePaths) -> None:
    """Set the process umask and take group/other bits off what an older daemon left behind."""
    os.umask(UMASK)
    for directory in (paths.root, paths.routers, paths.instances):
        for entry in _entries(directory):
            _owner_only(entry)
    for directory in (paths.images, paths.instances, paths.routers):
        _owner_only(directory)


def _entries(directory: Path) -> list[Path]:
    with contextlib.suppress(OSError):
        return list(directory.iterdir())
    return []


def _owner_only(path: Path) -> None:
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077)

