"""One way to replace a file's contents so that no reader (and, when asked, no crash) ever
sees half of them: write a temp file beside it, then rename it over the old one.

Every state file shipyard rewrites goes through `write_atomic` (the daemon's API file, image
manifests, drift baselines, certificates, router pid files and memories, HAProxy's saved
state). The one exception is the embedded data plane's own `control_server.write_durably`:
that process imports nothing of shipyard beyond router/table.py, errors and histogram
(docs/architecture.md), so it keeps its copy of the same steps."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, mode: int = 0o600, durable: bool = False) -> None:
    """`path` holds `data` afterwards, or (on any error, re-raised as it came) what it held
    before. `mode` is set exactly (not filtered by the umask), so the default is owner-only,
    as every file in the state directory is (tests/integration/test_api_hostile.py checks it);
    a file others must read says so. The temp file is created 0o600 (a secret is never
    readable by others, not even for a moment), in the same directory (a rename within one file system),
    under a name unique to this process and call. `durable`: the data and then the rename are
    fsynced, so a crash also leaves the old or the new contents; without it a crash may leave an
    empty file, which is cheaper for files rewritten often and rebuilt at start."""
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
