"""The image store: the catalogue of images, composing the object store and the trees.

Layout under ``root``::

    objects/ab/cdef...   one read-only file per distinct content (images/objects.py)
    manifests/<id>.json  canonical manifest bytes; sha256(bytes) == id, so it checks itself
    meta/<id>.json       what is not part of the identity: service, created_at
    inputs/<key>         build cache: input key -> image id
    trees/<id>/          the image materialised as a read-only directory (images/trees.py)
    staging/             private scratch space of builds in progress, always removed

An image exists exactly when its manifest exists, and the manifest is written last
(temp file + rename): a crash or a failed build never leaves a half image behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.errors import ImageError, NotFoundError
from shipyard.fsutil import write_atomic
from shipyard.images.build import BuildInput, LogFn, input_key, prepare, remove_dir, run_steps
from shipyard.images.manifest import VerifyReport, canonical_json, make_manifest, parse_manifest
from shipyard.images.objects import ObjectStore
from shipyard.images.trees import TreeStore

_FULL_ID = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]+")
MIN_PREFIX = 6


@dataclass(frozen=True)
class Image:
    """A built image. ``id`` covers everything but ``created_at`` (a fact of the store)."""

    id: str
    service: str
    created_at: float
    command: list[str]
    env: dict[str, str]
    files: int
    size: int
    manifest: dict[str, Any] = field(repr=False, compare=False)

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def to_dict(self) -> dict[str, Any]:
        """Summary for the API / CLI (the manifest is left out: it can be large)."""
        return {
            "id": self.id,
            "service": self.service,
            "created_at": self.created_at,
            "command": self.command,
            "env": self.env,
            "files": self.files,
            "size": self.size,
        }


def _write_manifest(path: Path, data: bytes) -> None:
    """Read-only and durable: a manifest or input key, once there, is never half written."""
    write_atomic(path, data, mode=0o444, durable=True)


class ImageStore:
    """Builds, finds, materialises and verifies images under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._objects = ObjectStore(self.root / "objects")
        self._trees = TreeStore(self.root / "trees", self._objects)

    @property
    def _manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def _meta(self) -> Path:
        return self.root / "meta"

    @property
    def _staging(self) -> Path:
        return self.root / "staging"

    def _ensure(self) -> None:
        dirs = (
            self._objects.root,
            self._trees.root,
            self._manifests,
            self._meta,
            self._staging,
            self._inputs,
        )
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)

    @property
    def _inputs(self) -> Path:
        """input key -> image id, so an unchanged build skips its steps."""
        return self.root / "inputs"

    def _cached(self, key: str) -> Image | None:
        try:
            image_id = (self._inputs / key).read_text().strip()
        except OSError:
            return None
        if not (self._manifests / f"{image_id}.json").exists():
            return None
        return self._load(image_id)

    # ---- build -------------------------------------------------------------------------

    async def build(self, inp: BuildInput, log: LogFn | None = None, use_cache: bool = True) -> Image:
        """Stage, run the steps, store the result. Same inputs -> same id -> the existing image.

        With build steps, the inputs (staged context + files, steps, env, command) are
        hashed first: if an image was already built from exactly these inputs it is
        returned without running the steps again (`use_cache=False` forces a rebuild)."""
        if not inp.service or "/" in inp.service:
            raise ImageError(f"invalid service name {inp.service!r}", hint="use letters, digits and dashes")
        self._ensure()
        staging = Path(tempfile.mkdtemp(prefix="build-", dir=self._staging))
        key = None
        try:
            tree = staging / "tree"
            tree.mkdir()
            await prepare(inp, tree, log, exclude=self.root.resolve())
            if inp.steps:
                key = await asyncio.to_thread(input_key, tree, inp)
                cached = self._cached(key) if use_cache else None
                if cached is not None:
                    if log is not None:
                        log(f"--- inputs unchanged: image {cached.short_id} reused without running the steps")
                    return cached
                await run_steps(inp, tree, log)
            entries = await asyncio.to_thread(self._objects.ingest, tree)
        finally:
            remove_dir(staging)
        manifest = make_manifest(inp.service, inp.run_command, {**inp.env, **inp.run_env}, entries)
        data = canonical_json(manifest)
        image_id = hashlib.sha256(data).hexdigest()
        if (self._manifests / f"{image_id}.json").exists():
            if key is not None:
                _write_manifest(self._inputs / key, image_id.encode())
            if log is not None:
                log(f"--- image {image_id[:12]} already exists: reused")
            return self._load(image_id)
        _write_manifest(
            self._meta / f"{image_id}.json",
            canonical_json({"service": inp.service, "created_at": time.time()}),
        )
        _write_manifest(self._manifests / f"{image_id}.json", data)
        if key is not None:
            _write_manifest(self._inputs / key, image_id.encode())
        if log is not None:
            log(f"--- built image {image_id[:12]} ({len(entries)} entries)")
        return self._load(image_id)

    # ---- lookup ------------------------------------------------------------------------

    def _ids(self) -> list[str]:
        if not self._manifests.is_dir():
            return []
        return sorted(
            n[:-5] for n in os.listdir(self._manifests) if n.endswith(".json") and _FULL_ID.fullmatch(n[:-5])
        )

    def _full_id(self, image_id: str) -> str:
        if not _FULL_ID.fullmatch(image_id):
            raise ImageError(
                f"{image_id!r} is not a full image id (64 hex characters)",
                hint="resolve a short id with ImageStore.get first",
            )
        return image_id

    def _read_manifest(self, image_id: str) -> dict[str, Any]:
        path = self._manifests / f"{self._full_id(image_id)}.json"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(
                f"image {image_id[:12]} does not exist",
                hint="list images with `shipyard images`, or build it",
            ) from None
        return parse_manifest(data, image_id)

    def _load(self, image_id: str) -> Image:
        manifest = self._read_manifest(image_id)
        meta_path = self._meta / f"{image_id}.json"
        try:
            meta = json.loads(meta_path.read_bytes())
            service, created_at = str(meta["service"]), float(meta["created_at"])
        except (OSError, ValueError, KeyError, TypeError):
            service = manifest["service"]
            created_at = (self._manifests / f"{image_id}.json").stat().st_mtime
        files = [e for e in manifest["files"] if e["type"] == "file"]
        return Image(
            id=image_id,
            service=service,
            created_at=created_at,
            command=list(manifest["command"]),
            env=dict(manifest["env"]),
            files=len(files),
            size=sum(int(e["size"]) for e in files),
            manifest=manifest,
        )

    def get(self, ref: str) -> Image:
        """An image by full id or by a unique prefix of at least 6 hex characters."""
        ref = ref.strip().lower().removeprefix("sha256:")
        if not _HEX.fullmatch(ref) or len(ref) > 64:
            raise ImageError(f"{ref!r} is not an image id", hint="use an id shown by `shipyard images`")
        if len(ref) < MIN_PREFIX:
            raise ImageError(
                f"image id prefix {ref!r} is too short", hint=f"give at least {MIN_PREFIX} hex characters"
            )
        matches = [i for i in self._ids() if i.startswith(ref)]
        if not matches:
            raise NotFoundError(f"no image with id {ref}", hint="list images with `shipyard images`")
        if len(matches) > 1:
            shown = ", ".join(m[:12] for m in matches[:5])
            raise ImageError(
                f"image id prefix {ref} is ambiguous: it matches {shown}",
                hint="give more characters of the id",
            )
        return self._load(matches[0])

    def list(self, service: str | None = None) -> list[Image]:
        """All images (of one service), newest first."""
        images = [self._load(i) for i in self._ids()]
        if service is not None:
            images = [im for im in images if im.service == service]
        return sorted(images, key=lambda im: (-im.created_at, im.id))

    # ---- trees -------------------------------------------------------------------------

    def tree_path(self, image_id: str) -> Path:
        return self._trees.path(self._full_id(image_id))

    def materialize(self, image_id: str) -> Path:
        """Write the image's read-only tree from the objects (checking each one) if not there yet."""
        return self._trees.materialize(image_id, self._read_manifest(image_id))

    def verify(self, image_id: str) -> VerifyReport:
        """Re-hash the materialised tree against the manifest (a tree never written: all missing)."""
        return self._trees.verify(image_id, self._read_manifest(image_id))

    def object_problem(self, manifest: dict[str, Any]) -> str | None:
        """Why the image's tree could not be written again from the object store right now (its
        first missing or corrupted object), or None when it could: a lost tree is only harmless
        while its objects are intact."""
        for e in manifest["files"]:
            if e["type"] == "file" and (problem := self._objects.check(e["sha256"])) is not None:
                return f"the object for {e['path']} is {problem}"
        return None

    def verified_tree(self, image_id: str) -> Path:
        """The tree to start an instance from, guaranteed to match the manifest right now."""
        return self._trees.verified(image_id, self._read_manifest(image_id))

    def quarantine_tree(self, image_id: str) -> Path | None:
        """Move a tampered tree aside so the next materialize writes a pristine one from the
        object store. Instances still running from it keep working (their cwd follows the
        rename); the caller removes the quarantined tree once they are replaced."""
        return self._trees.quarantine(self._full_id(image_id))

    def remove_tree(self, image_id: str) -> None:
        """Drop a materialised tree (e.g. a tampered one); the next materialize writes it afresh."""
        self._trees.remove(self._full_id(image_id))
