"""The host's image store, laid out exactly like a local one (images/store.py): ``objects/``,
``manifests/``, ``trees/`` and ``drift-baselines/`` under the helper's image root, written
and verified by the very same modules (images/objects.py, trees.py, drift/content.py),
which the bundle carries. What is new here is only what the wire needs: objects arrive as
a byte stream to be hashed on the way in, and every failure is an OpError reply.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from shipyard.drift.baseline import BaselineStore
from shipyard.drift.content import scan_tree
from shipyard.errors import ShipyardError
from shipyard.fsutil import write_atomic
from shipyard.images.manifest import parse_manifest
from shipyard.images.objects import ObjectStore
from shipyard.images.trees import TreeStore

from .protocol import (
    BAD_REQUEST,
    CORRUPTED,
    DISK_FULL,
    HASH_MISMATCH,
    IO_ERROR,
    MISSING_OBJECTS,
    NOT_FOUND,
    OpError,
    require,
    require_sha,
)

FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
MAX_MANIFEST = 64 << 20


class Body(Protocol):
    """The bytes framed after a request header."""

    size: int

    def chunks(self) -> Iterator[bytes]: ...

    def read_all(self, limit: int) -> bytes: ...


@contextlib.contextmanager
def disk_errors(what: str, where: Path) -> Iterator[None]:
    """OSErrors as replies: a full disk (or file size limit) says so and what to do."""
    try:
        yield
    except OSError as exc:
        if exc.errno in FULL_DISK_ERRNOS:
            raise OpError(DISK_FULL, f"the host's disk is full: cannot {what} ({exc.strerror})",
                          hint=f"free space on the file system of {where} or move the service to "
                          "another host; nothing half-written was kept") from None
        raise OpError(IO_ERROR, f"cannot {what}: {exc.strerror or exc}",
                      hint=f"check {where} on the host") from None


class HostStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.objects = ObjectStore(self.root / "objects")
        self.trees = TreeStore(self.root / "trees", self.objects)
        self.manifests = self.root / "manifests"
        self.baselines = BaselineStore(self.root / "drift-baselines")

    # objects -------------------------------------------------------------------------------
    def missing(self, args: dict[str, Any]) -> dict[str, Any]:
        shas = require(args, "sha256", list)
        return {"missing": [s for s in dict.fromkeys(require_sha(s) for s in shas)
                            if not self.objects.path(s).is_file()]}

    def put(self, args: dict[str, Any], body: Body) -> dict[str, Any]:
        """Hash while writing under a temp name; only a complete, matching object is renamed in.
        No fsync per object (as in a local store, and 2,000 small objects took 3.8 s with one):
        an object a crash left truncated fails the re-hash of materialize, which drops it so
        that ``missing`` asks for it again."""
        sha = require_sha(args.get("sha256"))
        obj = self.objects.path(sha)
        if obj.is_file():
            return {"stored": False}
        with disk_errors(f"store object {sha[:12]}", self.root):
            obj.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=obj.parent)
            try:
                h = hashlib.sha256()
                with os.fdopen(fd, "wb") as f:
                    for chunk in body.chunks():
                        h.update(chunk)
                        f.write(chunk)
                if h.hexdigest() != sha:
                    raise OpError(HASH_MISMATCH, f"object {sha[:12]} arrived with sha256 {h.hexdigest()[:12]}: "
                                  "refused", hint="the bytes were corrupted on the way or read from a "
                                  "changed file; send the object again from the controller's store")
                os.chmod(tmp, 0o444)
                os.replace(tmp, obj)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        return {"stored": True, "size": body.size}

    # trees ---------------------------------------------------------------------------------
    def _manifest(self, image_id: str) -> dict[str, Any]:
        try:
            data = (self.manifests / f"{image_id}.json").read_bytes()
        except FileNotFoundError:
            raise OpError(NOT_FOUND, f"image {image_id[:12]} was never materialised on this host",
                          hint="materialise it first (trees.materialize)") from None
        try:
            return parse_manifest(data, image_id)
        except ShipyardError as exc:
            raise OpError(CORRUPTED, exc.message, hint=exc.hint) from None

    def materialize(self, args: dict[str, Any], body: Body) -> dict[str, Any]:
        image_id = require_sha(args.get("image_id"), "image_id")
        data = body.read_all(MAX_MANIFEST)
        try:
            manifest = parse_manifest(data, image_id)
        except ShipyardError as exc:
            raise OpError(BAD_REQUEST, exc.message, hint=exc.hint) from None
        shas = sorted({e["sha256"] for e in manifest["files"] if e["type"] == "file"})
        absent = [s for s in shas if not self.objects.path(s).is_file()]
        if absent:
            raise OpError(MISSING_OBJECTS, f"image {image_id[:12]}: {len(absent)} object(s) missing on this host",
                          hint="send them first (objects.missing, objects.put)", objects=absent)
        existed = self.trees.path(image_id).is_dir()
        with disk_errors(f"materialise image {image_id[:12]}", self.root):
            self.manifests.mkdir(parents=True, exist_ok=True)
            if not (self.manifests / f"{image_id}.json").is_file():
                write_atomic(self.manifests / f"{image_id}.json", data, mode=0o444, durable=True)
            try:
                tree = self.trees.materialize(image_id, manifest)
            except ShipyardError as exc:
                bad = [s for s in shas if self.objects.check(s) is not None]
                for s in bad:   # never used again: the controller sends it anew
                    with contextlib.suppress(OSError):
                        os.unlink(self.objects.path(s))
                raise OpError(CORRUPTED, exc.message, hint="the corrupted objects were removed from the "
                              "host's store: send them again (objects.missing lists them)", objects=bad) from None
        return {"tree": str(tree), "created": not existed}

    def verify(self, args: dict[str, Any]) -> dict[str, Any]:
        """drift/content.py's scan of the tree (metadata or full), as its ContentResult fields."""
        image_id = require_sha(args.get("image_id"), "image_id")
        mode = require(args, "mode", str, "metadata")
        if mode not in ("metadata", "full"):
            raise OpError(BAD_REQUEST, f"mode {mode!r} is not 'metadata' or 'full'")
        manifest = self._manifest(image_id)
        res = scan_tree(self.trees.path(image_id), manifest, image_id, mode, self.baselines)   # type: ignore[arg-type]
        return dataclasses.asdict(res)

    def quarantine(self, args: dict[str, Any]) -> dict[str, Any]:
        image_id = require_sha(args.get("image_id"), "image_id")
        with disk_errors(f"move the tree of {image_id[:12]} aside", self.root):
            aside = self.trees.quarantine(image_id)
        self.baselines.drop(image_id)
        return {"moved_to": None if aside is None else str(aside)}

    def remove(self, args: dict[str, Any]) -> dict[str, Any]:
        image_id = require_sha(args.get("image_id"), "image_id")
        with disk_errors(f"remove the tree of {image_id[:12]}", self.root):
            self.trees.remove(image_id)
        self.baselines.drop(image_id)
        return {"removed": True}
