"""The parallel verifier: matches, mismatches, and paths swapped for something that is not a
regular file between the listing and the read (which must never hang or read forever)."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from shipyard.drift.hashing import Job, Verifier, check_one

BUF = memoryview(bytearray(1 << 16))


def job(rel: str, data: bytes) -> Job:
    return Job(rel, len(data), hashlib.sha256(data).hexdigest())


def test_match_and_mismatch(tmp: Path) -> None:
    (tmp / "a").write_bytes(b"hello" * 100_000)  # several reads of the 64 KiB buffer
    assert check_one(str(tmp), job("a", b"hello" * 100_000), BUF) is None
    bad = check_one(str(tmp), job("a", b"jello" * 100_000), BUF)
    assert bad is not None and bad.sha256 == hashlib.sha256(b"hello" * 100_000).hexdigest()


def test_grown_file_is_read_only_one_byte_past_its_size(tmp: Path) -> None:
    (tmp / "a").write_bytes(b"x" * 1000)
    bad = check_one(str(tmp), job("a", b"x" * 10), BUF)
    assert bad is not None and bad.size == 1000 and bad.sha256 is None


def test_swapped_paths_are_not_regular(tmp: Path) -> None:
    os.mkfifo(tmp / "fifo")
    os.symlink("/etc/hostname", tmp / "link")
    (tmp / "dir").mkdir()
    os.mknod(tmp / "zero", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero: endless if unbounded
    for rel in ("fifo", "link", "dir", "zero"):
        bad = check_one(str(tmp), job(rel, b"12345"), BUF)
        assert bad is not None and bad.not_regular, rel


def test_vanished_file_is_an_error_not_a_mismatch(tmp: Path) -> None:
    bad = check_one(str(tmp), job("gone", b"x"), BUF)
    assert bad is not None and bad.error and "disappeared" in bad.error


def test_workers_return_every_result(tmp: Path) -> None:
    jobs = []
    for i in range(200):
        data = bytes([i % 256]) * (i * 97)
        (tmp / f"f{i}").write_bytes(data)
        jobs.append(job(f"f{i}", data if i != 123 else b"other"))
    with Verifier(tmp, max_workers=3) as v:
        for j in jobs:
            v.submit(j)
        matched, mismatches = v.finish()
    assert len(matched) == 199 and [m.rel for m in mismatches] == ["f123"]
    assert v.bytes_read == sum(i * 97 for i in range(200))
