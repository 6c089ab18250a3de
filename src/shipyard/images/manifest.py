"""The manifest: what an image *is*, as canonical JSON, and how a tree is compared to it.

The image id is the sha256 of the canonical manifest bytes. Only what changes the
behaviour of the service goes in (paths, contents, exec bit, symlink targets, the
command and the environment) - never mtimes, owners or the build time - so the same
inputs always give the same id and any meaningful change gives a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.errors import ImageError, ImageVerificationError

FORMAT = 1
MODE_EXEC = "0755"
MODE_PLAIN = "0644"
TREE_FILE_MODE = {MODE_EXEC: 0o555, MODE_PLAIN: 0o444}
"""Permissions of a materialised file, by its manifest mode: nothing in a tree is writable."""
TREE_DIR_MODE = 0o555
CHUNK = 1 << 20

Entry = dict[str, Any]


def canonical_json(obj: Any) -> bytes:
    """One byte sequence per value: sorted keys, no optional whitespace, UTF-8."""
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ImageError(
            f"a file name or value is not valid UTF-8: {exc.object[exc.start : exc.end]!r}",
            hint="rename the file (or ignore it) so the manifest can be written as UTF-8",
        ) from exc


def image_id_of(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(manifest)).hexdigest()


def manifest_mode(st_mode: int) -> str:
    """Only the exec bit matters to a service; umask and owner bits would only add noise to the id."""
    return MODE_EXEC if st_mode & 0o111 else MODE_PLAIN


def hash_file(path: Path) -> tuple[str, int]:
    """sha256 and size of a file, read in chunks so large files never sit in memory."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def symlink_escapes(rel: str, target: str) -> bool:
    """True if the link at ``rel`` points outside the tree it lives in (judged on the text)."""
    if posixpath.isabs(target):
        return True
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    return resolved == ".." or resolved.startswith("../")


def walk_tree(
    root: Path, skip: Callable[[str, bool], bool] | None = None, prefix: str = ""
) -> Iterator[tuple[str, os.stat_result]]:
    """Yield (relative POSIX path, lstat) for everything under ``root``, depth first in name order,
    never following symlinks. ``skip(rel, is_dir)`` prunes an entry (and, for a directory, all
    below it). ``prefix`` is for the recursion."""
    with os.scandir(root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        rel = prefix + entry.name
        st = entry.stat(follow_symlinks=False)
        is_dir = stat.S_ISDIR(st.st_mode)
        if skip is not None and skip(rel, is_dir):
            continue
        yield rel, st
        if is_dir:
            yield from walk_tree(Path(entry.path), skip, rel + "/")


def make_manifest(
    service: str, command: list[str], env: dict[str, str], entries: list[Entry]
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "service": service,
        "command": list(command),
        "env": dict(env),
        "files": sorted(entries, key=lambda e: e["path"]),
    }


def describe_tree(root: Path) -> list[Entry]:
    """The content of a tree as manifest-like entries (used to key the build cache)."""
    out: list[Entry] = []
    for rel, st in walk_tree(root):
        if stat.S_ISLNK(st.st_mode):
            out.append({"path": rel, "type": "symlink", "target": os.readlink(root / rel)})
        elif stat.S_ISREG(st.st_mode):
            sha, size = hash_file(root / rel)
            out.append({"path": rel, "type": "file", "mode": manifest_mode(st.st_mode), "sha256": sha})
        else:
            out.append({"path": rel, "type": "dir" if stat.S_ISDIR(st.st_mode) else "other"})
    return out


def _check_path(rel: Any) -> str:
    if (
        not isinstance(rel, str)
        or not rel
        or rel.startswith("/")
        or any(part in ("", ".", "..") for part in rel.split("/"))
    ):
        raise ValueError(f"bad path {rel!r}")
    return rel


def parse_manifest(data: bytes, image_id: str) -> dict[str, Any]:
    """Load stored manifest bytes, checking they still hash to ``image_id`` and are well formed."""
    if hashlib.sha256(data).hexdigest() != image_id:
        raise ImageVerificationError(
            f"manifest of image {image_id[:12]} does not match its id: the image store is corrupted",
            hint="rebuild the image; do not edit files under the image store",
        )
    try:
        manifest = json.loads(data)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"unknown format {manifest.get('format')!r}")
        for e in manifest["files"]:
            _check_path(e["path"])
            if e["type"] not in ("file", "symlink", "dir"):
                raise ValueError(f"unknown entry type {e['type']!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ImageError(
            f"manifest of image {image_id[:12]} cannot be read: {exc}",
            hint="this store was written by another shipyard version; rebuild the image",
        ) from exc
    return manifest


@dataclass(frozen=True)
class VerifyReport:
    """How a materialised tree differs from its manifest. Empty lists mean the tree is intact."""

    image_id: str
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.added)

    def summary(self) -> str:
        short = self.image_id[:12]
        if self.ok:
            return f"image {short}: tree matches its manifest"

        def part(label: str, paths: list[str]) -> str:
            shown = ", ".join(paths[:5]) + (f", and {len(paths) - 5} more" if len(paths) > 5 else "")
            return f"{len(paths)} {label} ({shown})"

        parts = [
            part(label, paths)
            for label, paths in (("changed", self.changed), ("missing", self.missing), ("added", self.added))
            if paths
        ]
        return f"image {short}: tree differs from its manifest: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "ok": self.ok,
            "changed": self.changed,
            "missing": self.missing,
            "added": self.added,
        }


def _differs(path: Path, st: os.stat_result, want: Entry) -> bool:
    perms = stat.S_IMODE(st.st_mode)
    kind = want["type"]
    if kind == "dir":
        return not stat.S_ISDIR(st.st_mode) or perms != TREE_DIR_MODE
    if kind == "symlink":
        return not stat.S_ISLNK(st.st_mode) or os.readlink(path) != want["target"]
    if not stat.S_ISREG(st.st_mode) or perms != TREE_FILE_MODE[want["mode"]] or st.st_size != want["size"]:
        return True
    return hash_file(path)[0] != want["sha256"]


def diff_tree(root: Path, manifest: dict[str, Any], image_id: str) -> VerifyReport:
    """Re-hash every file under ``root`` and compare type, permissions, content and the set of
    paths with the manifest. Nothing is ignored: a stray ``__pycache__`` is reported as added."""
    expected: dict[str, Entry] = {e["path"]: e for e in manifest["files"]}
    changed: list[str] = []
    added: list[str] = []
    seen: set[str] = set()
    if root.is_dir() and not root.is_symlink():
        for rel, st in walk_tree(root):
            want = expected.get(rel)
            if want is None:
                added.append(rel)
                continue
            seen.add(rel)
            if _differs(root / rel, st, want):
                changed.append(rel)
    missing = sorted(p for p in expected if p not in seen)
    return VerifyReport(image_id, changed=sorted(changed), missing=missing, added=sorted(added))
