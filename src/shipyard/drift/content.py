"""Content drift: how an image tree on disk differs from its manifest (content, permissions,
type, symlink targets, added and missing paths).

Two passes. The *metadata* pass lists the tree (one lstat per entry), checks type,
permissions and size against the manifest, and re-hashes only the files whose stat no
longer equals their baseline (see baseline.py). The *full* pass re-hashes every file.
Both report the same kinds of change; the metadata pass only skips the hashing it can
prove unnecessary. A file that cannot be read is reported as unknown, never as missing."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.drift.baseline import RACY_SECONDS, Baseline, BaselineStore, StatKey, stat_key, tree_identity
from shipyard.drift.hashing import Job, Verifier
from shipyard.drift.report import DriftFinding, Kind, Mode
from shipyard.images.manifest import TREE_DIR_MODE, TREE_FILE_MODE

EVIDENCE_LIMIT = 50
"""Per-path details kept in a finding's evidence (all paths are still listed in ``paths``)."""


@dataclass
class ContentResult:
    image_id: str
    tree: str
    mode: Mode
    tree_missing: str | None = None
    content: dict[str, dict[str, Any]] = field(default_factory=dict)
    modes: dict[str, dict[str, Any]] = field(default_factory=dict)
    types: dict[str, dict[str, Any]] = field(default_factory=dict)
    symlinks: dict[str, dict[str, Any]] = field(default_factory=dict)
    added: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    metadata_only: list[str] = field(default_factory=list)
    """Files whose stat changed (a ``touch``) but whose content still matches: not drift."""
    baseline_error: str | None = None
    files_checked: int = 0
    files_hashed: int = 0
    bytes_hashed: int = 0
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not (self.tree_missing or self.content or self.modes or self.types or self.symlinks
                    or self.added or self.missing or self.unreadable)


def _kind(st_mode: int) -> str:
    if stat.S_ISREG(st_mode):
        return "file"
    if stat.S_ISDIR(st_mode):
        return "dir"
    if stat.S_ISLNK(st_mode):
        return "symlink"
    return "other"


def _walk(root: str, unlistable: dict[str, str]) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below ``root`` with its lstat; directories that cannot be listed go to ``unlistable``."""
    stack = [("", root)]
    while stack:
        prefix, path = stack.pop()
        try:
            with os.scandir(path) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        stack.append((prefix + entry.name + "/", entry.path))
                    yield prefix + entry.name, st
        except FileNotFoundError:
            continue
        except OSError as exc:
            unlistable[prefix.rstrip("/") or "."] = f"cannot list the directory: {exc.strerror or exc}"


def _perm_change(expected: int, actual: int) -> dict[str, Any]:
    changes = []
    if actual & 0o222 and not expected & 0o222:
        changes.append("write bit added")
    if (actual & 0o111) != (expected & 0o111):
        changes.append("exec bit added" if actual & 0o111 and not expected & 0o111 else "exec bit changed")
    if (actual & 0o444) != (expected & 0o444):
        changes.append("read bits changed")
    if actual & 0o7000:
        changes.append("setuid/setgid/sticky bit set")
    return {"expected": f"{expected:04o}", "actual": f"{actual:04o}",
            "change": ", ".join(changes) or "permissions changed"}


def scan_tree(root: Path, manifest: dict[str, Any], image_id: str, mode: Mode = "metadata",
              baselines: BaselineStore | None = None, max_workers: int | None = None,
              racy_seconds: float = RACY_SECONDS) -> ContentResult:
    """Compare the tree at ``root`` with ``manifest``. Blocking and CPU-heavy: call it from a thread."""
    began = time.perf_counter()
    racy_cutoff = time.time_ns() - int(racy_seconds * 1e9)
    res = ContentResult(image_id, str(root), mode)
    try:
        root_st = os.lstat(root)
    except FileNotFoundError:
        res.tree_missing = "the image tree does not exist"
    except OSError as exc:
        res.unreadable["."] = f"cannot stat the image tree: {exc.strerror or exc}"
        res.seconds = time.perf_counter() - began
        return res
    else:
        if not stat.S_ISDIR(root_st.st_mode):
            res.tree_missing = f"the image tree is a {_kind(root_st.st_mode)}, not a directory"
    if res.tree_missing:
        if baselines is not None:
            baselines.drop(image_id)
        res.seconds = time.perf_counter() - began
        return res
    if stat.S_IMODE(root_st.st_mode) != TREE_DIR_MODE:
        res.modes["."] = _perm_change(TREE_DIR_MODE, stat.S_IMODE(root_st.st_mode))

    identity = tree_identity(root_st)
    old = baselines.load(image_id, identity) if baselines is not None else None
    expected: dict[str, dict[str, Any]] = {e["path"]: e for e in manifest["files"]}
    seen: set[str] = set()
    fresh: dict[str, StatKey] = {}
    pending: dict[str, StatKey | None] = {}
    with Verifier(root, max_workers) as verifier:
        # Hashing starts while the listing goes on: the workers digest while this loop stats.
        for rel, st in _walk(str(root), res.unreadable):
            e = expected.get(rel)
            if e is None:
                res.added.append(rel)
                continue
            seen.add(rel)
            kind, actual = e["type"], _kind(st.st_mode)
            if kind != actual:
                res.types[rel] = {"expected": kind, "actual": actual}
                continue
            if kind == "symlink":
                try:
                    target = os.readlink(root / rel)
                except OSError as exc:
                    res.unreadable[rel] = f"cannot read the link: {exc.strerror or exc}"
                    continue
                if target != e["target"]:
                    res.symlinks[rel] = {"expected": e["target"], "actual": target}
                continue
            want_perms = TREE_DIR_MODE if kind == "dir" else TREE_FILE_MODE[e["mode"]]
            if stat.S_IMODE(st.st_mode) != want_perms:
                res.modes[rel] = _perm_change(want_perms, stat.S_IMODE(st.st_mode))
            if kind == "dir":
                continue
            res.files_checked += 1
            if st.st_size != e["size"]:
                res.content[rel] = {"expected_size": e["size"], "actual_size": st.st_size}
                continue
            key = stat_key(st)
            if mode == "metadata" and old is not None and old.files.get(rel) == key:
                fresh[rel] = key
                continue
            verifier.submit(Job(rel, st.st_size, e["sha256"]))
            # the stat taken before the read: a write after it moves the ctime, seen next time
            pending[rel] = key if st.st_ctime_ns < racy_cutoff and st.st_mtime_ns < racy_cutoff else None
        matched, mismatches = verifier.finish()
    blind = tuple(d + "/" for d in res.unreadable if d != ".")
    if "." not in res.unreadable:
        res.missing = [rel for rel in expected if rel not in seen and not rel.startswith(blind)]
    res.added.sort()

    res.files_hashed = len(pending)
    res.bytes_hashed = verifier.bytes_read
    old_files = old.files if old is not None else {}
    for rel in matched:
        key = pending[rel]
        before = old_files.get(rel)
        if before is not None and before != key:
            res.metadata_only.append(rel)
        if key is not None:
            fresh[rel] = key
    for m in mismatches:
        e = expected[m.rel]
        if m.not_regular:
            res.types[m.rel] = {"expected": "file", "actual": "not a regular file any more"}
        elif m.error is not None:
            res.unreadable[m.rel] = m.error
        else:
            res.content[m.rel] = {"expected_sha256": e["sha256"], "actual_sha256": m.sha256,
                                  "expected_size": e["size"], "actual_size": m.size}
    res.missing.sort()
    res.metadata_only.sort()
    if baselines is not None and (old is None or old.files != fresh):
        try:
            baselines.save(image_id, Baseline(identity, fresh))
        except OSError as exc:  # only a cache: the result stands, the next pass hashes more
            res.baseline_error = f"cannot write the baseline {baselines.path(image_id)}: {exc.strerror or exc}"
    res.seconds = time.perf_counter() - began
    return res


def _shown(paths: list[str], limit: int = 5) -> str:
    return ", ".join(paths[:limit]) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def content_findings(res: ContentResult, service: str, instance_ids: list[str]) -> list[DriftFinding]:
    """One finding per kind of change and per instance running the image (None: no instance does)."""
    short = res.image_id[:12]
    base = {"image_id": res.image_id, "tree": res.tree, "mode": res.mode}
    groups: list[tuple[Kind, str, str, dict[str, Any]]] = []
    if res.tree_missing:
        groups.append(("content", "tree", f"image {short}: {res.tree_missing}", {".": res.tree_missing}))
    for change, label, details in (
        ("content", "changed content", res.content),
        ("mode", "changed permissions", res.modes),
        ("type", "changed type", res.types),
        ("symlink", "changed symlink target", res.symlinks),
        ("added", "added", {p: {} for p in res.added}),
        ("missing", "missing", {p: {} for p in res.missing}),
    ):
        if details:
            paths = sorted(details)
            groups.append(("content", change, f"image {short}: {len(paths)} path(s) {label}: {_shown(paths)}",
                           details))
    if res.unreadable:
        paths = sorted(res.unreadable)
        groups.append(("unknown", "unreadable",
                       f"image {short}: {len(paths)} path(s) could not be read, their state is unknown: "
                       f"{_shown(paths)}", {p: {"reason": why} for p, why in res.unreadable.items()}))
    findings: list[DriftFinding] = []
    for kind, change, detail, details in groups:
        paths = sorted(details)
        evidence = {**base, "change": change,
                    "files": {p: details[p] for p in paths[:EVIDENCE_LIMIT]},
                    "more": max(0, len(paths) - EVIDENCE_LIMIT)}
        owners: list[str | None] = list(instance_ids) or [None]
        for iid in owners:
            findings.append(DriftFinding(kind, iid, service, detail, paths, evidence))
    return findings
