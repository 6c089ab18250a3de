"""Re-hash many files fast and compare each with its expected sha256: large reads into a
reused buffer, several files at once, started while the tree is still being listed.

Why threads here, when shipyard otherwise does its I/O with asyncio: hashing is CPU work,
and CPython's sha256 releases the GIL while it digests a buffer larger than 2 KiB, as
does the read syscall; so one worker per core keeps every core hashing. What stays under
the GIL is the per-file bookkeeping, kept to an open, one read per MiB and a close: a
file is read up to one byte past its expected size (a short read is the end of a regular
file), which also bounds the work if a file was swapped for a device or a pipe."""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

BUFFER_BYTES = 1 << 20
MAX_WORKERS = 8

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# O_NONBLOCK: a file swapped for a FIFO must not hang the scan in open().
_NOATIME = getattr(os, "O_NOATIME", 0)
# O_NOATIME: a scan should not make the disk write every file's atime; the kernel allows it
# only to the owner (or root), so it is dropped when refused.


@dataclass(frozen=True)
class Mismatch:
    """A file whose content is not the expected one, or could not be read."""

    rel: str
    sha256: str | None
    size: int
    error: str | None = None
    """Why the content could not be read; the file is then of unknown state, never "missing"."""
    not_regular: bool = False
    """The path is no longer a regular file (swapped between listing and reading)."""


@dataclass(frozen=True)
class Job:
    rel: str
    size: int
    sha256: str


def workers() -> int:
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


def _open(path: str) -> int:
    if _NOATIME:
        try:
            return os.open(path, _OPEN_FLAGS | _NOATIME)
        except PermissionError:
            pass
    return os.open(path, _OPEN_FLAGS)


def check_one(root: str, job: Job, view: memoryview) -> Mismatch | None:
    """None when the file holds exactly the expected bytes."""
    rel = job.rel
    try:
        fd = _open(os.path.join(root, rel))
    except FileNotFoundError:
        return Mismatch(rel, None, 0, error="disappeared while the tree was scanned")
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink swapped in after the listing
            return Mismatch(rel, None, 0, not_regular=True)
        return Mismatch(rel, None, 0, error=f"cannot open: {exc.strerror or exc}")
    try:
        h = hashlib.sha256()
        want, got, chunk = job.size + 1, 0, len(view)
        while got < want:
            n = os.readv(fd, [view[: min(chunk, want - got)]])
            if not n:
                break
            h.update(view[:n])
            got += n
        if got == job.size:
            digest = h.hexdigest()
            return None if digest == job.sha256 else Mismatch(rel, digest, got)
        st = os.fstat(fd)  # rare path: say what it is now
        if not stat.S_ISREG(st.st_mode):
            return Mismatch(rel, None, 0, not_regular=True)
        return Mismatch(rel, None, st.st_size)
    except OSError as exc:
        if exc.errno == errno.EISDIR:
            return Mismatch(rel, None, 0, not_regular=True)
        return Mismatch(rel, None, 0, error=f"cannot read: {exc.strerror or exc}")
    finally:
        os.close(fd)


class Verifier:
    """Workers that check the files submitted to them; use as a context manager, so the
    threads are always stopped. The first submit starts them; finish() returns the files
    that matched and the mismatches."""

    def __init__(self, root: Path, max_workers: int | None = None) -> None:
        self.root = str(root)
        self.n = max_workers or workers()
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._matched: list[str] = []
        self._mismatches: list[Mismatch] = []
        self._read: list[int] = []
        self._failure: BaseException | None = None
        self.bytes_read = 0

    def submit(self, job: Job) -> None:
        if not self._threads:
            self._threads = [threading.Thread(target=self._work, name=f"drift-hash-{i}", daemon=True)
                             for i in range(self.n)]
            for t in self._threads:
                t.start()
        self._queue.put(job)

    def _work(self) -> None:
        view = memoryview(bytearray(BUFFER_BYTES))
        matched: list[str] = []
        mismatches: list[Mismatch] = []
        read = 0
        try:
            while (job := self._queue.get()) is not None:
                bad = check_one(self.root, job, view)
                if bad is None:
                    matched.append(job.rel)
                    read += job.size
                else:
                    mismatches.append(bad)
                    read += bad.size
        except BaseException as exc:  # surfaced by finish(): a lost result must not read as "clean"
            self._failure = exc
        finally:
            # each worker hands over its results once; list.extend/append are atomic under the GIL
            self._matched.extend(matched)
            self._mismatches.extend(mismatches)
            self._read.append(read)

    def _stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()
        self._threads = []

    def finish(self) -> tuple[list[str], list[Mismatch]]:
        self._stop()
        if self._failure is not None:
            raise self._failure
        self.bytes_read = sum(self._read)
        return self._matched, self._mismatches

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._stop()
