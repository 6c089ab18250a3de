"""The image store: content-addressed objects, manifests, and read-only trees made from them.

Layout under ``root``::

    objects/ab/cdef...   one read-only file per distinct content, named by its sha256
    manifests/<id>.json  canonical manifest bytes; sha256(bytes) == id, so it checks itself
    meta/<id>.json       what is not part of the identity: service, created_at
    trees/<id>/          the image materialised as a read-only directory (an instance's cwd)
    staging/             private scratch space of builds in progress, always removed

An image exists exactly when its manifest exists, and the manifest is written last
(temp file + rename): a crash or a failed build never leaves a half image behind.
Trees are copies, never hard links, so a write into a tree cannot corrupt the objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.errors import ImageError, ImageVerificationError, NotFoundError
from shipyard.images.build import BuildInput, LogFn, input_key, prepare, remove_dir, run_steps
from shipyard.images.manifest import (
    CHUNK,
    TREE_DIR_MODE,
    TREE_FILE_MODE,
    Entry,
    VerifyReport,
    canonical_json,
    diff_tree,
    hash_file,
    make_manifest,
    manifest_mode,
    parse_manifest,
    symlink_escapes,
    walk_tree,
)

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


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o444)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _copy_hashing(src: Path, dst_fd: int) -> str:
    """Copy ``src`` into an open descriptor and return the sha256 of the bytes copied."""
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


class ImageStore:
    """Builds, finds, materialises and verifies images under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def _objects(self) -> Path:
        return self.root / "objects"

    @property
    def _manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def _meta(self) -> Path:
        return self.root / "meta"

    @property
    def _trees(self) -> Path:
        return self.root / "trees"

    @property
    def _staging(self) -> Path:
        return self.root / "staging"

    def _ensure(self) -> None:
        for d in (self._objects, self._manifests, self._meta, self._trees, self._staging, self._inputs):
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

    def _object_path(self, sha: str) -> Path:
        return self._objects / sha[:2] / sha[2:]

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
            entries = await asyncio.to_thread(self._ingest, tree)
        finally:
            remove_dir(staging)
        manifest = make_manifest(inp.service, inp.run_command, {**inp.env, **inp.run_env}, entries)
        data = canonical_json(manifest)
        image_id = hashlib.sha256(data).hexdigest()
        if (self._manifests / f"{image_id}.json").exists():
            if key is not None:
                _write_atomic(self._inputs / key, image_id.encode())
            if log is not None:
                log(f"--- image {image_id[:12]} already exists: reused")
            return self._load(image_id)
        _write_atomic(
            self._meta / f"{image_id}.json",
            canonical_json({"service": inp.service, "created_at": time.time()}),
        )
        _write_atomic(self._manifests / f"{image_id}.json", data)
        if key is not None:
            _write_atomic(self._inputs / key, image_id.encode())
        if log is not None:
            log(f"--- built image {image_id[:12]} ({len(entries)} entries)")
        return self._load(image_id)

    def _ingest(self, tree: Path) -> list[Entry]:
        """Describe the staged tree and put its file contents in the object store."""
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
                self._store_object(path, sha, rel)
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

    def _store_object(self, src: Path, sha: str, rel: str) -> None:
        """Keep one read-only copy per content; written under a temp name, then renamed."""
        obj = self._object_path(sha)
        if obj.exists():
            return
        obj.parent.mkdir(exist_ok=True)
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
        return self._trees / self._full_id(image_id)

    def materialize(self, image_id: str) -> Path:
        """Write the image's read-only tree from the objects (checking each one) if not there yet."""
        manifest = self._read_manifest(image_id)
        dest = self.tree_path(image_id)
        if dest.is_dir():
            return dest
        self._ensure()
        tmp = Path(tempfile.mkdtemp(prefix=f"{image_id}.tmp-", dir=self._trees))
        try:
            self._write_tree(tmp, manifest, image_id)
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

    def _write_tree(self, tmp: Path, manifest: dict[str, Any], image_id: str) -> None:
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
                self._restore_object(e, path, image_id)
        for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            os.chmod(d, TREE_DIR_MODE)
        os.chmod(tmp, TREE_DIR_MODE)

    def _restore_object(self, e: Entry, path: Path, image_id: str) -> None:
        obj = self._object_path(e["sha256"])
        hint = "the object store was modified; rebuild the image to restore its objects"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            sha = _copy_hashing(obj, fd)
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

    def verify(self, image_id: str) -> VerifyReport:
        """Re-hash the materialised tree against the manifest (a tree never written: all missing)."""
        manifest = self._read_manifest(image_id)
        return diff_tree(self.tree_path(image_id), manifest, image_id)

    def object_problem(self, manifest: dict[str, Any]) -> str | None:
        """Why the image's tree could not be written again from the object store right now (its
        first missing or corrupted object), or None when it could: a lost tree is only harmless
        while its objects are intact."""
        for e in manifest["files"]:
            if e["type"] != "file":
                continue
            obj = self._object_path(e["sha256"])
            if not obj.is_file():
                return f"the object for {e['path']} is missing from the store"
            if hash_file(obj)[0] != e["sha256"]:
                return f"the object for {e['path']} is corrupted"
        return None

    def verified_tree(self, image_id: str) -> Path:
        """The tree to start an instance from, guaranteed to match the manifest right now."""
        tree = self.materialize(image_id)
        report = self.verify(image_id)
        if not report.ok:
            raise ImageVerificationError(
                f"{report.summary()}; refusing to use the tree at {tree}",
                hint="image trees must never be edited: remove the tree (ImageStore.remove_tree) "
                "so it is materialised again from the object store",
            )
        return tree

    def quarantine_tree(self, image_id: str) -> Path | None:
        """Move a tampered tree aside so the next materialize writes a pristine one from the
        object store. Instances still running from it keep working (their cwd follows the
        rename); the caller removes the quarantined tree once they are replaced."""
        tree = self.tree_path(image_id)
        if not tree.is_dir():
            return None
        aside = self._trees / f"{tree.name}.tampered-{time.time_ns()}"
        os.rename(tree, aside)
        return aside

    def remove_tree(self, image_id: str) -> None:
        """Drop a materialised tree (e.g. a tampered one); the next materialize writes it afresh."""
        remove_dir(self.tree_path(image_id))
