"""Read-only trees: an image written out as a directory an instance can run from.

Layout under ``root``: ``<id>/`` per materialised image, and ``<id>.tampered-<ns>/`` for a
tree moved aside after tampering. A tree is written under a temp name from the object
store (re-hashing every object on the way) and renamed into place, so ``<id>/`` is either
absent or complete. Trees are copies, never hard links, so a write into a tree cannot
corrupt the objects; and a tree is never repaired in place, only replaced.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from shipyard.errors import ImageVerificationError
from shipyard.images.build import remove_dir
from shipyard.images.manifest import TREE_DIR_MODE, TREE_FILE_MODE, Entry, VerifyReport, diff_tree
from shipyard.images.objects import ObjectStore


class TreeStore:
    """Writes, verifies and sets aside the trees of images whose manifests the caller has
    already read and checked (ids given here are full ids)."""

    def __init__(self, root: Path, objects: ObjectStore) -> None:
        self.root = Path(root)
        self.objects = objects

    def path(self, image_id: str) -> Path:
        return self.root / image_id

    def materialize(self, image_id: str, manifest: dict[str, Any]) -> Path:
        """The image's tree, written from the objects first if it is not there yet."""
        dest = self.path(image_id)
        if dest.is_dir():
            return dest
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{image_id}.tmp-", dir=self.root))
        try:
            self._write(tmp, manifest, image_id)
            try:
                os.rename(tmp, dest)
            except OSError:
                if not dest.is_dir():
                    raise
                remove_dir(tmp)  # another process materialised it first: same content
        except BaseException:
            remove_dir(tmp)
            raise
        return dest

    def _write(self, tmp: Path, manifest: dict[str, Any], image_id: str) -> None:
        dirs: list[Path] = []
        for e in manifest["files"]:
            path = tmp / e["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            if e["type"] == "dir":
                path.mkdir(exist_ok=True)
                dirs.append(path)
            elif e["type"] == "symlink":
                os.symlink(e["target"], path)
            else:
                self._restore_file(e, path, image_id)
        # children first, while their parents are still writable
        for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            os.chmod(d, TREE_DIR_MODE)
        os.chmod(tmp, TREE_DIR_MODE)

    def _restore_file(self, e: Entry, path: Path, image_id: str) -> None:
        hint = "the object store was modified; rebuild the image to restore its objects"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            sha = self.objects.copy_out(e["sha256"], fd)
        except FileNotFoundError:
            raise ImageVerificationError(
                f"image {image_id[:12]}: object for {e['path']} is missing from the store", hint=hint
            ) from None
        if sha != e["sha256"]:
            raise ImageVerificationError(
                f"image {image_id[:12]}: object for {e['path']} is corrupted (sha256 {sha[:12]}, "
                f"expected {e['sha256'][:12]})",
                hint=hint,
            )
        os.chmod(path, TREE_FILE_MODE[e["mode"]])

    def verify(self, image_id: str, manifest: dict[str, Any]) -> VerifyReport:
        """Re-hash the tree against the manifest (a tree never written: all missing)."""
        return diff_tree(self.path(image_id), manifest, image_id)

    def verified(self, image_id: str, manifest: dict[str, Any]) -> Path:
        """The tree, materialised if needed and re-hashed: refused unless it matches right now."""
        tree = self.materialize(image_id, manifest)
        report = self.verify(image_id, manifest)
        if not report.ok:
            raise ImageVerificationError(
                f"{report.summary()}; refusing to use the tree at {tree}",
                hint="image trees must never be edited: remove the tree (ImageStore.remove_tree) "
                "so it is materialised again from the object store",
            )
        return tree

    def quarantine(self, image_id: str) -> Path | None:
        """Move a tampered tree aside (running instances keep their cwd); None if there is none."""
        tree = self.path(image_id)
        if not tree.is_dir():
            return None
        aside = self.root / f"{tree.name}.tampered-{time.time_ns()}"
        os.rename(tree, aside)
        return aside

    def remove(self, image_id: str) -> None:
        remove_dir(self.path(image_id))
