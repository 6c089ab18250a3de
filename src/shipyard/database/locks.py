"""PostgreSQL's table-level lock modes and which of them conflict, so the linter (what a
statement will take) and the dynamic check (what pg_locks shows it took) speak the same
names and judge a lock the same way: does it stop the application's reads, or its writes?"""

from __future__ import annotations

from collections.abc import Iterable

ACCESS_SHARE = "ACCESS SHARE"
ROW_SHARE = "ROW SHARE"
ROW_EXCLUSIVE = "ROW EXCLUSIVE"
SHARE_UPDATE_EXCLUSIVE = "SHARE UPDATE EXCLUSIVE"
SHARE = "SHARE"
SHARE_ROW_EXCLUSIVE = "SHARE ROW EXCLUSIVE"
EXCLUSIVE = "EXCLUSIVE"
ACCESS_EXCLUSIVE = "ACCESS EXCLUSIVE"

MODES: tuple[str, ...] = (ACCESS_SHARE, ROW_SHARE, ROW_EXCLUSIVE, SHARE_UPDATE_EXCLUSIVE, SHARE,
                          SHARE_ROW_EXCLUSIVE, EXCLUSIVE, ACCESS_EXCLUSIVE)
"""Weakest first, in PostgreSQL's own numbering (LOCK TABLE's mode 1..8)."""

_CONFLICTS: dict[str, frozenset[str]] = {
    ACCESS_SHARE: frozenset({ACCESS_EXCLUSIVE}),
    ROW_SHARE: frozenset({EXCLUSIVE, ACCESS_EXCLUSIVE}),
    ROW_EXCLUSIVE: frozenset({SHARE, SHARE_ROW_EXCLUSIVE, EXCLUSIVE, ACCESS_EXCLUSIVE}),
    SHARE_UPDATE_EXCLUSIVE: frozenset({SHARE_UPDATE_EXCLUSIVE, SHARE, SHARE_ROW_EXCLUSIVE, EXCLUSIVE,
                                       ACCESS_EXCLUSIVE}),
    SHARE: frozenset({ROW_EXCLUSIVE, SHARE_UPDATE_EXCLUSIVE, SHARE_ROW_EXCLUSIVE, EXCLUSIVE, ACCESS_EXCLUSIVE}),
    SHARE_ROW_EXCLUSIVE: frozenset({ROW_EXCLUSIVE, SHARE_UPDATE_EXCLUSIVE, SHARE, SHARE_ROW_EXCLUSIVE, EXCLUSIVE,
                                    ACCESS_EXCLUSIVE}),
    EXCLUSIVE: frozenset({ROW_SHARE, ROW_EXCLUSIVE, SHARE_UPDATE_EXCLUSIVE, SHARE, SHARE_ROW_EXCLUSIVE, EXCLUSIVE,
                          ACCESS_EXCLUSIVE}),
    ACCESS_EXCLUSIVE: frozenset(MODES),
}

_PG_LOCKS_NAMES = {mode.title().replace(" ", "") + "Lock": mode for mode in MODES}


def _check(mode: str) -> str:
    if mode not in _CONFLICTS:
        raise ValueError(f"not a PostgreSQL table lock mode: {mode!r} (one of {', '.join(MODES)})")
    return mode


def conflicts(a: str, b: str) -> bool:
    """Whether a transaction holding `a` makes one asking for `b` wait (symmetric)."""
    return _check(b) in _CONFLICTS[_check(a)]


def blocks_reads(mode: str) -> bool:
    """Plain SELECTs (ACCESS SHARE) wait behind it: only ACCESS EXCLUSIVE does that."""
    return conflicts(mode, ACCESS_SHARE)


def blocks_writes(mode: str) -> bool:
    """INSERT / UPDATE / DELETE (ROW EXCLUSIVE) wait behind it."""
    return conflicts(mode, ROW_EXCLUSIVE)


def from_pg_locks(name: str) -> str:
    """pg_locks.mode ('AccessExclusiveLock') -> 'ACCESS EXCLUSIVE'. ValueError for modes that are
    not table lock modes (SIReadLock, the serializable predicate lock)."""
    try:
        return _PG_LOCKS_NAMES[name]
    except KeyError:
        raise ValueError(f"not a table lock mode in pg_locks: {name!r}") from None


def from_lock_statement(mode_number: int) -> str:
    """LOCK TABLE's mode as the parser numbers it (1 = ACCESS SHARE .. 8 = ACCESS EXCLUSIVE)."""
    if not 1 <= mode_number <= len(MODES):
        raise ValueError(f"lock mode number out of range: {mode_number}")
    return MODES[mode_number - 1]


def strongest(modes: Iterable[str]) -> str | None:
    """The mode that conflicts with the most others (None for no modes)."""
    found = [_check(m) for m in modes]
    return max(found, key=MODES.index) if found else None
