"""Manifest format, ids and tree comparison, on real files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from shipyard.errors import ImageError, ImageVerificationError
from shipyard.images.manifest import (
    VerifyReport,
    canonical_json,
    diff_tree,
    hash_file,
    image_id_of,
    make_manifest,
    manifest_mode,
    parse_manifest,
    symlink_escapes,
    walk_tree,
)


def test_canonical_json_is_independent_of_key_order() -> None:
    a = canonical_json({"b": 1, "a": {"y": [1, 2], "x": "é"}})
    b = canonical_json({"a": {"x": "é", "y": [1, 2]}, "b": 1})
    assert a == b == '{"a":{"x":"é","y":[1,2]},"b":1}'.encode()


def test_canonical_json_rejects_undecodable_names() -> None:
    bad = os.fsdecode(b"caf\xe9.txt")  # surrogate-escaped, as os.listdir returns it
    with pytest.raises(ImageError, match="not valid UTF-8"):
        canonical_json({"path": bad})


def test_image_id_covers_every_field() -> None:
    base = make_manifest("svc", ["run"], {"A": "1"}, [{"path": "a", "type": "dir"}])
    ids = {
        image_id_of(base),
        image_id_of(make_manifest("svc2", ["run"], {"A": "1"}, [{"path": "a", "type": "dir"}])),
        image_id_of(make_manifest("svc", ["run", "x"], {"A": "1"}, [{"path": "a", "type": "dir"}])),
        image_id_of(make_manifest("svc", ["run"], {"A": "2"}, [{"path": "a", "type": "dir"}])),
        image_id_of(make_manifest("svc", ["run"], {"A": "1"}, [{"path": "b", "type": "dir"}])),
    }
    assert len(ids) == 5
    assert image_id_of(base) == hashlib.sha256(canonical_json(base)).hexdigest()


def test_make_manifest_sorts_entries() -> None:
    m = make_manifest("s", [], {}, [{"path": "b", "type": "dir"}, {"path": "a", "type": "dir"}])
    assert [e["path"] for e in m["files"]] == ["a", "b"]


def test_hash_file_streams_large_file(tmp: Path) -> None:
    big = tmp / "big"
    data = os.urandom(3 * (1 << 20) + 17)
    big.write_bytes(data)
    assert hash_file(big) == (hashlib.sha256(data).hexdigest(), len(data))


def test_manifest_mode_keeps_only_exec_bit() -> None:
    assert manifest_mode(0o100700) == "0755"
    assert manifest_mode(0o100001) == "0755"
    assert manifest_mode(0o100600) == "0644"
    assert manifest_mode(0o100444) == "0644"


@pytest.mark.parametrize(
    ("rel", "target", "escapes"),
    [
        ("a", "b", False),
        ("d/a", "../b", False),
        ("d/a", "../../b", True),
        ("a", "..", True),
        ("a", "/etc/passwd", True),
        ("d/e/a", "../../x/../y", False),
    ],
)
def test_symlink_escapes(rel: str, target: str, escapes: bool) -> None:
    assert symlink_escapes(rel, target) is escapes


def test_walk_tree_is_sorted_and_does_not_follow_links(tmp: Path) -> None:
    (tmp / "b").mkdir()
    (tmp / "b" / "z").write_text("z")
    (tmp / "a").write_text("a")
    os.symlink("b", tmp / "c")
    assert [rel for rel, _ in walk_tree(tmp)] == ["a", "b", "b/z", "c"]
    assert [rel for rel, _ in walk_tree(tmp, lambda rel, is_dir: is_dir)] == ["a", "c"]


def test_parse_manifest_checks_the_id() -> None:
    m = make_manifest("s", [], {}, [])
    data = canonical_json(m)
    assert parse_manifest(data, hashlib.sha256(data).hexdigest()) == m
    with pytest.raises(ImageVerificationError, match="does not match its id"):
        parse_manifest(data, "0" * 64)


def test_parse_manifest_rejects_paths_leaving_the_tree() -> None:
    data = canonical_json(make_manifest("s", [], {}, [{"path": "../x", "type": "dir"}]))
    with pytest.raises(ImageError, match="bad path"):
        parse_manifest(data, hashlib.sha256(data).hexdigest())


def _tree(root: Path) -> dict:
    """A tiny materialised-looking tree and its manifest."""
    (root / "d").mkdir()
    (root / "d" / "f.txt").write_text("hello")
    (root / "run.sh").write_text("#!/bin/sh\n")
    os.symlink("d/f.txt", root / "ln")
    os.chmod(root / "d" / "f.txt", 0o444)
    os.chmod(root / "run.sh", 0o555)
    os.chmod(root / "d", 0o555)
    entries = [
        {"path": "d", "type": "dir"},
        {
            "path": "d/f.txt",
            "type": "file",
            "mode": "0644",
            "size": 5,
            "sha256": hashlib.sha256(b"hello").hexdigest(),
        },
        {"path": "ln", "type": "symlink", "target": "d/f.txt"},
        {
            "path": "run.sh",
            "type": "file",
            "mode": "0755",
            "size": 10,
            "sha256": hashlib.sha256(b"#!/bin/sh\n").hexdigest(),
        },
    ]
    return make_manifest("s", [], {}, entries)


def test_diff_tree_clean_then_each_kind_of_drift(tmp: Path) -> None:
    m = _tree(tmp)
    assert diff_tree(tmp, m, "f" * 64).ok
    os.chmod(tmp / "d", 0o755)
    (tmp / "d" / "f.txt").unlink()
    (tmp / "d" / "f.txt").write_text("hellO")
    os.chmod(tmp / "d" / "f.txt", 0o444)
    os.chmod(tmp / "run.sh", 0o444)  # lost its exec bit
    os.unlink(tmp / "ln")
    os.symlink("run.sh", tmp / "ln")  # retargeted
    (tmp / "__pycache__").mkdir()
    (tmp / "__pycache__" / "x.pyc").write_bytes(b"\0")
    r = diff_tree(tmp, m, "f" * 64)
    assert r.changed == ["d", "d/f.txt", "ln", "run.sh"]
    assert r.missing == []
    assert r.added == ["__pycache__", "__pycache__/x.pyc"]
    assert not r.ok


def test_diff_tree_reports_missing_files_and_missing_tree(tmp: Path) -> None:
    m = _tree(tmp)
    os.unlink(tmp / "run.sh")
    r = diff_tree(tmp, m, "f" * 64)
    assert (r.changed, r.missing, r.added) == ([], ["run.sh"], [])
    r = diff_tree(tmp / "nope", m, "f" * 64)
    assert r.missing == ["d", "d/f.txt", "ln", "run.sh"]


def test_verify_report_summary() -> None:
    assert VerifyReport("ab" * 32).summary() == f"image {'ab' * 6}: tree matches its manifest"
    r = VerifyReport("ab" * 32, changed=["a"], missing=[], added=[f"x{i}" for i in range(7)])
    text = r.summary()
    assert "1 changed (a)" in text
    assert "7 added (x0, x1, x2, x3, x4, and 2 more)" in text
    assert "missing" not in text
    assert r.to_dict()["ok"] is False
