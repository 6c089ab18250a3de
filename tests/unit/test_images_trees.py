"""Materialised trees: read-only copies of the objects, verified before every use."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from shipyard.errors import ImageVerificationError, NotFoundError
from shipyard.images import BuildInput, Image, ImageStore


@pytest.fixture
def store(tmp: Path) -> ImageStore:
    return ImageStore(tmp / "images")


@pytest.fixture
async def image(store: ImageStore, tmp: Path) -> Image:
    src = tmp / "src"
    (src / "pkg" / "empty").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("VALUE = 1\n")
    (src / "bin.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(src / "bin.sh", 0o755)
    os.symlink("pkg/mod.py", src / "alias.py")
    return await store.build(
        BuildInput("svc", src, [], [], {}, {"conf.toml": "a = 1\n"}, ["sh", "bin.sh"], {})
    )


def writable_by_owner(path: Path) -> bool:
    return bool(os.lstat(path).st_mode & 0o222)


async def test_materialize_makes_a_read_only_copy(store: ImageStore, image: Image) -> None:
    tree = store.materialize(image.id)
    assert tree == store.tree_path(image.id)
    assert (tree / "pkg" / "mod.py").read_text() == "VALUE = 1\n"
    assert (tree / "conf.toml").read_text() == "a = 1\n"
    assert os.readlink(tree / "alias.py") == "pkg/mod.py"
    assert (tree / "pkg" / "empty").is_dir()
    assert stat.S_IMODE(os.stat(tree / "bin.sh").st_mode) == 0o555
    assert stat.S_IMODE(os.stat(tree / "pkg" / "mod.py").st_mode) == 0o444
    for d in (tree, tree / "pkg", tree / "pkg" / "empty"):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o555
    # copies, not hard links: a write into the tree can never reach the object store
    assert os.stat(tree / "pkg" / "mod.py").st_nlink == 1
    assert store.verify(image.id).ok
    assert [p.name for p in (store.root / "trees").iterdir()] == [image.id]  # no temp dir left


async def test_materialize_is_idempotent(store: ImageStore, image: Image) -> None:
    tree = store.materialize(image.id)
    inode = os.stat(tree / "pkg" / "mod.py").st_ino
    assert store.materialize(image.id) == tree
    assert os.stat(tree / "pkg" / "mod.py").st_ino == inode
    assert store.verified_tree(image.id) == tree


async def test_verify_before_materialize_reports_everything_missing(store: ImageStore, image: Image) -> None:
    report = store.verify(image.id)
    assert not report.ok
    assert len(report.missing) == len(image.manifest["files"])


async def test_verify_detects_changed_missing_added(store: ImageStore, image: Image) -> None:
    tree = store.materialize(image.id)
    os.chmod(tree / "pkg", 0o755)  # what an attacker (or root) must do first
    os.chmod(tree / "pkg" / "mod.py", 0o644)
    (tree / "pkg" / "mod.py").write_text("VALUE = 2\n")
    os.chmod(tree / "pkg" / "mod.py", 0o444)
    os.chmod(tree, 0o755)
    (tree / "conf.toml").unlink()
    (tree / "extra.txt").write_text("new")
    os.chmod(tree, 0o555)
    os.chmod(tree / "pkg", 0o555)
    report = store.verify(image.id)
    assert report.changed == ["pkg/mod.py"]
    assert report.missing == ["conf.toml"]
    assert report.added == ["extra.txt"]
    with pytest.raises(ImageVerificationError) as err:
        store.verified_tree(image.id)
    for name in ("pkg/mod.py", "conf.toml", "extra.txt"):
        assert name in str(err.value)


async def test_same_size_content_change_and_permission_change_are_caught(
    store: ImageStore, image: Image
) -> None:
    tree = store.materialize(image.id)
    os.chmod(tree / "bin.sh", 0o755)  # made writable: no longer the read-only tree it must be
    assert store.verify(image.id).changed == ["bin.sh"]
    with open(tree / "bin.sh", "r+b") as f:  # same size, one byte different
        f.seek(12)
        f.write(b"H")
    os.chmod(tree / "bin.sh", 0o555)
    assert store.verify(image.id).changed == ["bin.sh"]


async def test_remove_tree_then_rematerialize_heals(store: ImageStore, image: Image) -> None:
    tree = store.materialize(image.id)
    os.chmod(tree, 0o755)
    (tree / "intruder").write_text("x")
    with pytest.raises(ImageVerificationError):
        store.verified_tree(image.id)
    store.remove_tree(image.id)
    assert not tree.exists()
    assert store.verified_tree(image.id) == tree
    assert not (tree / "intruder").exists()


async def test_corrupted_object_is_caught_while_materializing(store: ImageStore, image: Image) -> None:
    sha = next(e["sha256"] for e in image.manifest["files"] if e["path"] == "pkg/mod.py")
    obj = store.root / "objects" / sha[:2] / sha[2:]
    os.chmod(obj, 0o644)
    obj.write_text("VALUE = 666\n")
    with pytest.raises(ImageVerificationError, match="object for pkg/mod.py is corrupted"):
        store.materialize(image.id)
    assert not store.tree_path(image.id).exists()
    assert list((store.root / "trees").iterdir()) == []  # the half-written temp tree is gone
    obj.unlink()
    with pytest.raises(ImageVerificationError, match="object for pkg/mod.py is missing"):
        store.materialize(image.id)


async def test_rebuild_restores_a_lost_object(store: ImageStore, image: Image, tmp: Path) -> None:
    sha = next(e["sha256"] for e in image.manifest["files"] if e["path"] == "conf.toml")
    (store.root / "objects" / sha[:2] / sha[2:]).unlink()
    again = await store.build(
        BuildInput("svc", tmp / "src", [], [], {}, {"conf.toml": "a = 1\n"}, ["sh", "bin.sh"], {})
    )
    assert again.id == image.id
    assert store.verified_tree(image.id).joinpath("conf.toml").read_text() == "a = 1\n"


async def test_unknown_image(store: ImageStore, image: Image) -> None:
    unknown = "f" * 64 if not image.id.startswith("f") else "e" * 64
    with pytest.raises(NotFoundError):
        store.materialize(unknown)
    with pytest.raises(NotFoundError):
        store.verify(unknown)
