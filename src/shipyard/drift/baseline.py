"""The metadata baseline of a tree: the (size, mtime, ctime, inode, mode) of each file at the
moment its content was last hashed and found equal to the manifest.

A metadata pass trusts a file whose stat still equals its baseline and re-hashes the
others. ctime is in the key because no user call can set it: writing the content back and
resetting the mtime (``touch -d``) still moves the ctime, so such a file is re-hashed.

Invalidation: a re-materialised tree is a new directory (other inode) with new files
(new inodes, new ctimes), so neither the tree identity nor any file's key can match an old
baseline. A file is recorded only if its ctime is older than ``RACY_SECONDS`` before the
hash: a write in the same clock tick as our stat could otherwise leave the old ctime and
go unseen (git's "racily clean" index entries are the same problem).

Stored as one small JSON file per image beside the image store (never inside the tree:
any file there would be drift), written atomically."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from shipyard.fsutil import write_atomic

FORMAT = 2
RACY_SECONDS = 2.0
StatKey = str
"""size, mtime_ns, ctime_ns, inode and st_mode as one string: a string loads from JSON as is,
so reading the baseline of a 10,000-file tree costs a few milliseconds."""


def stat_key(st: os.stat_result) -> StatKey:
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino} {st.st_mode}"


def tree_identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino]


@dataclass
class Baseline:
    identity: list[int]
    files: dict[str, StatKey] = field(default_factory=dict)


class BaselineStore:
    """One JSON document per image under ``root`` (e.g. <image store>/drift-baselines)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, image_id: str) -> Path:
        return self.root / f"{image_id}.json"

    def load(self, image_id: str, identity: list[int]) -> Baseline | None:
        """The baseline of this very tree, or None (absent, unreadable, or of an earlier tree)."""
        try:
            doc = json.loads(self.path(image_id).read_bytes())
            if doc.get("format") != FORMAT or doc.get("identity") != identity:
                return None
            files = doc["files"]
            if not isinstance(files, dict):
                return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return Baseline(identity, files)

    def save(self, image_id: str, baseline: Baseline) -> None:
        data = json.dumps({"format": FORMAT, "identity": baseline.identity, "files": baseline.files},
                          separators=(",", ":")).encode()
        write_atomic(self.path(image_id), data, mode=0o600)

    def drop(self, image_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(image_id).unlink()
