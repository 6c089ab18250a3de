"""Content drift on real materialised trees: both passes find every kind of change, with
its path; a touch alone is not drift; the baseline spares unchanged files and cannot
outlive its tree."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from pathlib import Path

import pytest

from shipyard.drift.baseline import BaselineStore
from shipyard.drift.content import ContentResult, content_findings, scan_tree
from shipyard.drift.report import Mode
from shipyard.images import BuildInput, Image, ImageStore

MODES: tuple[Mode, ...] = ("metadata", "full")


@pytest.fixture
def store(tmp: Path) -> ImageStore:
    return ImageStore(tmp / "images")


@pytest.fixture
async def image(store: ImageStore, tmp: Path) -> Image:
    src = tmp / "src"
    (src / "pkg" / "sub").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("VALUE = 1\n")
    (src / "pkg" / "sub" / "deep.txt").write_text("deep\n")
    (src / "app.py").write_text("print('hello')\n" * 50)
    (src / "run.sh").write_text("#!/bin/sh\nexec python3 app.py\n")
    os.chmod(src / "run.sh", 0o755)
    os.symlink("pkg/mod.py", src / "alias.py")
    return await store.build(BuildInput("svc", src, run_command=["sh", "run.sh"]))


@pytest.fixture
def tree(store: ImageStore, image: Image) -> Path:
    return store.materialize(image.id)


@pytest.fixture
def baselines(tmp: Path) -> BaselineStore:
    return BaselineStore(tmp / "baselines")


def scan(tree: Path, image: Image, mode: Mode, baselines: BaselineStore | None = None,
         racy_seconds: float = 0.0) -> ContentResult:
    return scan_tree(tree, image.manifest, image.id, mode, baselines, racy_seconds=racy_seconds)


def verified(tree: Path, image: Image, baselines: BaselineStore) -> None:
    """A full pass that records the baseline, then a pause longer than a coarse clock tick so
    that a later change gets a later ctime."""
    assert scan(tree, image, "full", baselines).clean
    time.sleep(0.05)


def writable(path: Path) -> None:
    os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) | stat.S_IWUSR)


def test_pristine_tree_is_clean_in_both_passes(tree: Path, image: Image, baselines: BaselineStore) -> None:
    for mode in MODES:
        res = scan(tree, image, mode, baselines)
        assert res.clean, res
        assert res.files_checked == 4


def test_metadata_pass_hashes_nothing_unchanged(tree: Path, image: Image, baselines: BaselineStore) -> None:
    verified(tree, image, baselines)
    res = scan(tree, image, "metadata", baselines)
    assert res.clean and res.files_hashed == 0 and res.bytes_hashed == 0
    assert scan(tree, image, "full", baselines).files_hashed == 4


@pytest.mark.parametrize("mode", MODES)
def test_edited_file_is_found_with_its_path(mode: Mode, tree: Path, image: Image, baselines: BaselineStore) -> None:
    verified(tree, image, baselines)
    target = tree / "pkg" / "mod.py"
    writable(target)
    target.write_text("VALUE = 2\n")  # same size: only the hash can tell
    os.chmod(target, 0o444)
    res = scan(tree, image, mode, baselines)
    assert list(res.content) == ["pkg/mod.py"]
    assert res.content["pkg/mod.py"]["actual_sha256"] != res.content["pkg/mod.py"]["expected_sha256"]
    assert not (res.modes or res.added or res.missing)
    findings = content_findings(res, "svc", ["svc-blue-1", "svc-blue-2"])
    assert [(f.kind, f.instance_id, f.paths) for f in findings] == [
        ("content", "svc-blue-1", ["pkg/mod.py"]), ("content", "svc-blue-2", ["pkg/mod.py"])]
    assert findings[0].evidence["change"] == "content" and findings[0].evidence["image_id"] == image.id


def test_edit_with_the_mtime_put_back_is_still_found(tree: Path, image: Image, baselines: BaselineStore) -> None:
    verified(tree, image, baselines)
    target = tree / "app.py"
    before = os.lstat(target)
    writable(target)
    data = target.read_bytes()
    target.write_bytes(b"X" + data[1:])
    os.chmod(target, stat.S_IMODE(before.st_mode))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.lstat(target).st_mtime_ns == before.st_mtime_ns
    assert list(scan(tree, image, "metadata", baselines).content) == ["app.py"]  # the ctime moved


def test_grown_file_is_found_without_hashing(tree: Path, image: Image) -> None:
    writable(tree / "app.py")
    with open(tree / "app.py", "a") as f:
        f.write("# more\n")
    res = scan(tree, image, "metadata")
    assert res.content["app.py"]["actual_size"] == res.content["app.py"]["expected_size"] + 7


@pytest.mark.parametrize("mode", MODES)
def test_touch_alone_is_not_drift(mode: Mode, tree: Path, image: Image, baselines: BaselineStore) -> None:
    verified(tree, image, baselines)
    os.utime(tree / "app.py")
    res = scan(tree, image, mode, baselines)
    assert res.clean
    assert res.metadata_only == ["app.py"]
    if mode == "metadata":
        assert res.files_hashed == 1  # only the touched file is re-hashed
    time.sleep(0.05)
    again = scan(tree, image, "metadata", baselines)  # its new stat is now the baseline
    assert again.clean and again.files_hashed == 0 and again.metadata_only == []


@pytest.mark.parametrize("mode", MODES)
def test_permission_changes(mode: Mode, tree: Path, image: Image, baselines: BaselineStore) -> None:
    verified(tree, image, baselines)
    os.chmod(tree / "app.py", 0o644)      # write bit added to a read-only tree
    os.chmod(tree / "run.sh", 0o444)      # exec bit removed
    os.chmod(tree / "pkg", 0o755)         # a directory made writable
    res = scan(tree, image, mode, baselines)
    assert sorted(res.modes) == ["app.py", "pkg", "run.sh"]
    assert res.modes["app.py"] == {"expected": "0444", "actual": "0644", "change": "write bit added"}
    assert res.modes["run.sh"]["expected"] == "0555" and res.modes["run.sh"]["actual"] == "0444"
    assert "exec bit" in res.modes["run.sh"]["change"]
    assert not res.content  # content is intact
    assert [f.paths for f in content_findings(res, "svc", [])] == [["app.py", "pkg", "run.sh"]]


@pytest.mark.parametrize("mode", MODES)
def test_added_and_missing_files(mode: Mode, tree: Path, image: Image, baselines: BaselineStore) -> None:
    verified(tree, image, baselines)
    writable(tree / "pkg")
    (tree / "pkg" / "evil.py").write_text("import os\n")
    (tree / "pkg" / "sub" / "deep.txt").chmod(0o644)
    writable(tree / "pkg" / "sub")
    (tree / "pkg" / "sub" / "deep.txt").unlink()
    os.mkdir(tree / "newdir")
    (tree / "newdir" / "x").write_text("x")
    res = scan(tree, image, mode, baselines)
    assert res.added == ["newdir", "newdir/x", "pkg/evil.py"]
    assert res.missing == ["pkg/sub/deep.txt"]
    changes = {f.evidence["change"]: f.paths for f in content_findings(res, "svc", ["i1"])}
    assert changes["added"] == ["newdir", "newdir/x", "pkg/evil.py"]
    assert changes["missing"] == ["pkg/sub/deep.txt"]


@pytest.mark.parametrize("mode", MODES)
def test_symlink_retargeted_and_file_replaced_by_a_link(mode: Mode, tree: Path, image: Image,
                                                        baselines: BaselineStore) -> None:
    verified(tree, image, baselines)
    writable(tree)
    os.unlink(tree / "alias.py")
    os.symlink("app.py", tree / "alias.py")
    os.unlink(tree / "run.sh")
    os.symlink("/bin/sh", tree / "run.sh")
    res = scan(tree, image, mode, baselines)
    assert res.symlinks == {"alias.py": {"expected": "pkg/mod.py", "actual": "app.py"}}
    assert res.types == {"run.sh": {"expected": "file", "actual": "symlink"}}
    assert "." in res.modes  # the tree's root was made writable


def test_missing_tree_is_reported_and_drops_the_baseline(tree: Path, image: Image, store: ImageStore,
                                                         baselines: BaselineStore) -> None:
    verified(tree, image, baselines)
    assert baselines.path(image.id).exists()
    store.remove_tree(image.id)
    res = scan(tree, image, "metadata", baselines)
    assert res.tree_missing and not res.clean
    assert not baselines.path(image.id).exists()
    assert content_findings(res, "svc", ["i1"])[0].kind == "content"


def test_rematerialised_tree_does_not_trust_the_old_baseline(tree: Path, image: Image, store: ImageStore,
                                                             baselines: BaselineStore) -> None:
    verified(tree, image, baselines)
    old = json.loads(baselines.path(image.id).read_text())
    store.remove_tree(image.id)
    store.materialize(image.id)
    res = scan(tree, image, "metadata", baselines)
    assert res.clean and res.files_hashed == 4  # nothing trusted: every file hashed again
    new = json.loads(baselines.path(image.id).read_text())
    assert new["files"] and all(new["files"][p] != old["files"][p] for p in new["files"])


def test_freshly_written_files_are_not_trusted_yet(tree: Path, image: Image, baselines: BaselineStore) -> None:
    # just materialised: inside the racy window a write in the same clock tick could go unseen
    assert scan(tree, image, "full", baselines, racy_seconds=60).clean
    assert scan(tree, image, "metadata", baselines, racy_seconds=60).files_hashed == 4


def test_corrupt_baseline_is_ignored(tree: Path, image: Image, baselines: BaselineStore) -> None:
    verified(tree, image, baselines)
    baselines.path(image.id).write_text("{not json")
    res = scan(tree, image, "metadata", baselines)
    assert res.clean and res.files_hashed == 4


def test_file_replaced_by_a_directory(tree: Path, image: Image) -> None:
    writable(tree)
    os.unlink(tree / "app.py")
    os.mkdir(tree / "app.py")
    res = scan(tree, image, "full")
    assert res.types == {"app.py": {"expected": "file", "actual": "dir"}}


def test_unreadable_file_and_directory_are_unknown_not_missing(tmp: Path, tree: Path, image: Image) -> None:
    """As root nothing is unreadable, so the scan runs in a child that drops to nobody."""
    os.chmod(tmp, 0o755)
    os.chmod(tree / "app.py", 0o000)
    os.chmod(tree / "pkg" / "sub", 0o311)  # may be entered, not listed
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            res = scan(tree, image, "full")
            doc = {"unreadable": res.unreadable, "missing": res.missing, "content": list(res.content),
                   "modes": list(res.modes), "kinds": [f.kind for f in content_findings(res, "svc", ["i1"])]}
            os.write(w, json.dumps(doc).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    doc = json.loads(data)
    assert "app.py" in doc["unreadable"] and "cannot open" in doc["unreadable"]["app.py"]
    assert "pkg/sub" in doc["unreadable"]
    assert doc["missing"] == []  # pkg/sub/deep.txt could not be seen: unknown, never missing
    assert "app.py" not in doc["content"]
    assert sorted(doc["modes"]) == ["app.py", "pkg/sub"]
    assert "unknown" in doc["kinds"]


def test_many_files_are_hashed_by_the_pool(tmp: Path) -> None:
    """Enough data for several workers; one changed file among them is still found."""
    src = tmp / "many"
    src.mkdir()
    for i in range(40):
        (src / f"f{i:02d}").write_bytes(bytes([i]) * (1 << 18))
    store = ImageStore(tmp / "images2")
    image = asyncio.run(store.build(BuildInput("many", src, run_command=["true"])))
    tree = store.materialize(image.id)
    writable(tree / "f17")
    with open(tree / "f17", "r+b") as f:
        f.seek(1 << 17)
        f.write(b"\xff")
    res = scan_tree(tree, image.manifest, image.id, "full", None, max_workers=3)
    assert list(res.content) == ["f17"]
    assert res.files_hashed == 40 and res.bytes_hashed == 40 << 18


def test_unwritable_baseline_does_not_fail_the_scan(tmp: Path, tree: Path, image: Image) -> None:
    (tmp / "not-a-dir").write_text("")
    res = scan(tree, image, "full", BaselineStore(tmp / "not-a-dir" / "baselines"))
    assert res.clean and res.baseline_error and "cannot write the baseline" in res.baseline_error
