"""When the state database fails: sqlite3's errors in words, and how often.

The daemon is the only writer of state.db, so a write that has to wait is waiting for
somebody else (a `sqlite3` shell in a transaction, a backup tool): nothing the daemon does
will finish it. The connection therefore waits at most `BUSY_TIMEOUT_MS` for a lock and
then fails at once, instead of holding the event loop (and with it the API, the probes
and every rollout) for sqlite's usual seconds. WAL readers are never blocked by a writer,
so reads keep answering while somebody else holds `BEGIN EXCLUSIVE`.

A failure of the environment (disk full, locked, read-only, I/O error, unopenable file)
becomes one `StoreUnavailable` naming the cause and the path; a constraint or a bug in a
statement stays the sqlite3 error it is. Nothing retries here: callers know what a retry
means (the driver holds its step, the API answers 503). The log gets one line per cause,
then one "still failing" count per minute while it lasts, and one line when a write
succeeds again: never a traceback per call."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from shipyard.errors import StoreUnavailable

log = logging.getLogger("shipyard.store")

BUSY_TIMEOUT_MS = 10
"""How long a statement may wait for a lock held by another process before it fails."""
SUMMARY_EVERY = 60.0
"""Seconds between the "still failing" lines of one outage."""
QUIET_FOR = 1.0
"""An outage is over once writes have succeeded for this long with no refusal: on a nearly
full disk a small write fits now and then, which is no recovery worth a log line (so the
line comes with the first write at least this long after the first that worked)."""

# primary result codes (https://sqlite.org/rescode.html) that say the environment failed
_BUSY, _LOCKED, _NOMEM, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _PROTOCOL, _NOTADB = (
    5, 6, 7, 8, 10, 11, 13, 14, 15, 26)
_ENVIRONMENT = {_BUSY, _LOCKED, _NOMEM, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _PROTOCOL, _NOTADB}


def _disk_full(directory: Path) -> bool:
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail == 0 or (st.f_favail == 0 and st.f_files > 0)


def translate(e: sqlite3.Error, path: Path) -> StoreUnavailable | None:
    """The StoreUnavailable an error of the environment means, or None (a constraint, a bug)."""
    code = getattr(e, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary is None and isinstance(e, sqlite3.OperationalError):
        primary = _BUSY if "locked" in str(e) else _FULL if "full" in str(e) else _IOERR
    if primary not in _ENVIRONMENT:
        return None
    where, retry = path.parent, "the daemon retries on its own and goes on once it can write"
    if primary == _FULL or (primary == _IOERR and _disk_full(where)):
        return StoreUnavailable(f"no space left on device writing {path}",
                                f"free space in {where} (df -h {where}); {retry}", cause="disk_full")
    if primary in (_BUSY, _LOCKED, _PROTOCOL):
        return StoreUnavailable(f"the state database {path} is locked by another process",
                                f"find the process holding it (fuser {path}) and end its transaction; {retry}", cause="locked")
    if primary == _READONLY:
        return StoreUnavailable(f"the state database {path} is read-only",
                                f"make {path} and {where} writable by uid {os.getuid()}; {retry}", cause="read_only")
    if primary == _CANTOPEN:
        return StoreUnavailable(f"the state database {path} cannot be opened: {e}",
                                f"check that {where} exists and is writable by uid {os.getuid()}", cause="cannot_open")
    if primary in (_CORRUPT, _NOTADB):
        return StoreUnavailable(f"the state database {path} is damaged: {e}",
                                "stop the daemon and restore the file from a backup", cause="damaged")
    return StoreUnavailable(f"I/O error on the state database {path}: {e}",
                            f"check the disk holding {where} (dmesg); {retry}", cause="io_error")


class FaultLog:
    """One log line per cause, a count per minute while it lasts, one line on recovery."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, every: float = SUMMARY_EVERY,
                 quiet_for: float = QUIET_FOR) -> None:
        self.clock = clock
        self.every = every
        self.quiet_for = quiet_for
        self._last_refusal = 0.0
        self._ok_since: float | None = None
        self.failing: str | None = None     # the message of the current cause
        self.since = 0.0
        self._line_at = 0.0
        self._refused = 0
        self.refused_total = 0
        """Calls refused in the current (or last) outage: what its log lines count."""
        self.refusals: dict[str, int] = {}
        """Calls refused since the daemon started, per cause (StoreUnavailable.cause): /metrics."""

    def failed(self, err: StoreUnavailable) -> None:
        now = self.clock()
        self.refused_total += 1
        self.refusals[err.cause] = self.refusals.get(err.cause, 0) + 1
        self._last_refusal = now
        if err.message != self.failing:
            if self.failing is None:
                self.since, self.refused_total = now, 1
            self.failing, self._line_at, self._refused = err.message, now, 0
            log.error("%s; %s", err.message, err.hint)
            return
        self._refused += 1
        if now - self._line_at >= self.every:
            log.error("%s: still failing: %d store calls refused in the last %.0f s",
                      err.message, self._refused, now - self._line_at)
            self._line_at, self._refused = now, 0

    def wrote(self) -> None:
        if self.failing is None:
            return
        now = self.clock()
        if self._ok_since is None or self._ok_since < self._last_refusal:
            self._ok_since = now
        elif now - self._ok_since >= self.quiet_for:
            log.warning("state database writable again after %.1f s (%d store calls refused)",
                        self._last_refusal - self.since, self.refused_total)
            self.failing = self._ok_since = None


class GuardedConnection(sqlite3.Connection):
    """A connection whose statements fail as StoreUnavailable when the environment does,
    and tell `faults` of each failure and of the first write that succeeds after one.
    Made by `sqlite3.connect(..., factory=GuardedConnection)`, then `guard(path)`."""

    path: Path
    faults: FaultLog

    def guard(self, path: Path, faults: FaultLog | None = None) -> GuardedConnection:
        self.path, self.faults = path, faults or FaultLog()
        return self

    def execute(self, sql: str, parameters: Iterable[Any] | dict[str, Any] = (), /) -> sqlite3.Cursor:
        try:
            cur = super().execute(sql, parameters)
        except sqlite3.Error as e:
            raise self._failed(e) from None
        if self.faults.failing is not None and not sql.lstrip()[:6].upper() == "SELECT":
            self.faults.wrote()
        return cur

    def executescript(self, sql: str, /) -> sqlite3.Cursor:
        try:
            return super().executescript(sql)
        except sqlite3.Error as e:
            raise self._failed(e) from None

    def rollback_quietly(self) -> None:
        """Leave no transaction open after a failure (a failed COMMIT keeps it open)."""
        if self.in_transaction:
            try:
                super().execute("ROLLBACK")
            except sqlite3.Error as e:
                log.warning("ROLLBACK on %s failed: %s", self.path, e)

    def _failed(self, e: sqlite3.Error) -> Exception:
        err = translate(e, self.path)
        if err is None:
            return e
        self.faults.failed(err)
        return err
