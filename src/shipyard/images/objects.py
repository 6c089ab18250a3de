"""The object store: one read-only file per distinct content, named by its sha256.

Layout under ``root``: ``ab/cdef...`` (the first two hex characters name a subdirectory, so
no directory grows to hold every object). An object is written under a temp name and
renamed, so a crash never leaves a half object under its final name; its bytes are hashed
while they are copied, so a file that changes under us is refused rather than stored wrong.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from pathlib import Path

from shipyard.errors import ImageError
from shipyard.images.manifest import CHUNK, Entry, hash_file, manifest_mode, symlink_escapes, walk_tree


def _copy_hashing(src: Path, dst_fd: int) -> str:
    """Copy ``src`` into an open descriptor (closing it) and return the sha256 of the bytes copied."""
    h = hashlib.sha256()
    try:
        fin = open(src, "rb")
    except BaseException:
        os.close(dst_fd)
        raise
    with fin, os.fdopen(dst_fd, "wb") as fout:
        while chunk := fin.read(CHUNK):
            h.update(chunk)
            fout.write(chunk)
    return h.hexdigest()


class ObjectStore:
    """Content-addressed file contents: the only place an image's bytes are kept."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, sha: str) -> Path:
        return self.root / sha[:2] / sha[2:]

    def put(self, src: Path, sha: str, rel: str) -> None:
        """Keep one read-only copy per content; ``rel`` names the file in the error if it changed."""
        obj = self.path(sha)
        if obj.exists():
            return
        obj.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=obj.parent)
        try:
            if _copy_hashing(src, fd) != sha:
                raise ImageError(
                    f"{rel} changed while the image was being stored",
                    hint="make sure no build step leaves a process writing to the tree",
                )
            os.chmod(tmp, 0o444)
            os.replace(tmp, obj)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def check(self, sha: str) -> str | None:
        """Why the object could not be used right now ("missing from the store" or "corrupted"),
        or None when it is intact. Re-hashes it: the store lives on a writable disk."""
        obj = self.path(sha)
        if not obj.is_file():
            return "missing from the store"
        if hash_file(obj)[0] != sha:
            return "corrupted"
        return None

    def copy_out(self, sha: str, dst_fd: int) -> str:
        """Copy the object into an open descriptor (closing it) and return the sha256 of what was
        actually read, so the caller sees corruption; FileNotFoundError if it is missing."""
        return _copy_hashing(self.path(sha), dst_fd)

    def ingest(self, tree: Path) -> list[Entry]:
        """Describe a staged tree as manifest entries and put its file contents in the store."""
        real_root = os.path.realpath(tree)
        entries: list[Entry] = []
        for rel, st in walk_tree(tree):
            path = tree / rel
            if stat.S_ISDIR(st.st_mode):
                entries.append({"path": rel, "type": "dir"})
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                real = os.path.realpath(path)
                if symlink_escapes(rel, target) or not (
                    real == real_root or real.startswith(real_root + os.sep)
                ):
                    raise ImageError(
                        f"symlink {rel} -> {target} points outside the image",
                        hint="an image must be self-contained: make the build produce the file itself",
                    )
                entries.append({"path": rel, "type": "symlink", "target": target})
            elif stat.S_ISREG(st.st_mode):
                sha, size = hash_file(path)
                self.put(path, sha, rel)
                entries.append(
                    {
                        "path": rel,
                        "type": "file",
                        "mode": manifest_mode(st.st_mode),
                        "size": size,
                        "sha256": sha,
                    }
                )
            else:
                raise ImageError(
                    f"the build produced {rel}, which is not a regular file, directory or symlink",
                    hint="remove it in a build step or add it to build.ignore",
                )
        return entries
