"""The one way a migration Script runs, shared by the real runner and `shipyard db check`,
so what the check observes is what the deploy will do: the same transaction boundaries
(see statements.py) and the same session lock_timeout, which turns "waits behind a
long query while every other query queues behind us" into a quick, retryable failure."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from .connect import DatabaseError
from .statements import Script, Statement

LOCK_NOT_AVAILABLE = "55P03"


class StatementFailed(DatabaseError):
    """A statement of a migration failed on the server."""

    def __init__(self, *, source: str, line: int, statement: str, sqlstate: str | None, server_message: str,
                 transactional: bool, applied: int) -> None:
        self.source = source
        self.line = line
        self.statement = statement
        self.sqlstate = sqlstate
        self.server_message = server_message
        self.transactional = transactional
        self.applied = applied
        """How many statements of the script stay applied (always 0 for a transactional script)."""
        self.lock_timeout = sqlstate == LOCK_NOT_AVAILABLE
        """The statement gave up waiting for a lock: nothing is wrong with it, it may be retried."""
        code = f" [{sqlstate}]" if sqlstate else ""
        super().__init__(f"{source}:{line}: {server_message}{code} (statement: {statement})", self._hint())

    def _hint(self) -> str:
        if self.transactional:
            kept = f"nothing of {self.source} was applied (it ran in one transaction)"
        elif self.applied:
            kept = (f"the first {self.applied} statement(s) of {self.source} stay applied; "
                    "the run resumes at the statement that failed")
        else:
            kept = f"nothing of {self.source} was applied"
        if self.lock_timeout:
            return (f"another session held a conflicting lock longer than lock_timeout; {kept}. "
                    "Retry when the long-running query or transaction is gone")
        return f"{kept}. Fix the migration and run it again"

    @property
    def location(self) -> str:
        return f"{self.source}:{self.line}"


Before = Callable[[Statement], Awaitable[None]]
After = Callable[[Statement, psycopg.AsyncConnection], Awaitable[None]]
Failed = Callable[[Statement, StatementFailed], Awaitable[None]]


@dataclass(frozen=True)
class StatementHooks:
    """Observers of each statement. `after` runs while a transactional statement's
    transaction is still open (its locks are still held); `failed` runs after the rollback."""

    before: Before | None = None
    after: After | None = None
    failed: Failed | None = None


def lock_timeout_ms(seconds: float) -> int:
    """PostgreSQL reads 0 as "wait forever": refuse it rather than silently disable the guard."""
    if seconds <= 0:
        raise ValueError(f"lock_timeout must be positive, got {seconds!r}")
    return max(1, round(seconds * 1000))


async def run_script(conn: psycopg.AsyncConnection, script: Script, *, lock_timeout: float,
                     hooks: StatementHooks | None = None) -> None:
    """Apply `script` on `conn` (an idle connection; autocommit is set for the duration).
    Raises StatementFailed for the first statement the server refuses."""
    hooks = hooks or StatementHooks()
    ms = lock_timeout_ms(lock_timeout)
    was_autocommit = conn.autocommit
    if not was_autocommit:
        await conn.set_autocommit(True)
    previous = await _show(conn, "lock_timeout")
    await conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{ms}ms")))
    try:
        if script.transactional:
            await _run_in_one_transaction(conn, script, hooks)
        else:
            await _run_one_by_one(conn, script, hooks)
    finally:
        if not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
            await conn.execute("SELECT set_config('lock_timeout', %s, false)", (previous,))
            if not was_autocommit:
                await conn.set_autocommit(False)


async def _show(conn: psycopg.AsyncConnection, setting: str) -> str:
    cur = await conn.execute("SELECT current_setting(%s)", (setting,))
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


async def _execute(conn: psycopg.AsyncConnection, statement: Statement) -> None:
    # no parameters: psycopg sends the text as a simple query, exactly as written (no % placeholders)
    await conn.execute(statement.sql.encode())


def _failure(script: Script, statement: Statement, error: psycopg.Error, applied: int) -> StatementFailed:
    diag = error.diag
    message = diag.message_primary or " ".join(str(error).split()) or type(error).__name__
    return StatementFailed(source=script.source, line=statement.line, statement=statement.first_line,
                           sqlstate=error.sqlstate, server_message=message,
                           transactional=script.transactional, applied=applied)


async def _run_in_one_transaction(conn: psycopg.AsyncConnection, script: Script,
                                  hooks: StatementHooks) -> None:
    failure: tuple[Statement, StatementFailed] | None = None
    try:
        async with conn.transaction():
            for statement in script.statements:
                if hooks.before:
                    await hooks.before(statement)
                try:
                    await _execute(conn, statement)
                except psycopg.Error as e:
                    failure = statement, _failure(script, statement, e, applied=0)
                    raise failure[1] from None
                if hooks.after:
                    await hooks.after(statement, conn)
    except StatementFailed:
        if failure is None:
            raise
        if hooks.failed:
            await hooks.failed(*failure)
        raise failure[1] from None


async def _run_one_by_one(conn: psycopg.AsyncConnection, script: Script, hooks: StatementHooks) -> None:
    """Autocommit; BEGIN ... COMMIT in the file are real transactions. `applied` counts only
    what is committed: statements of a block that fails are rolled back with it."""
    committed = 0
    try:
        for i, statement in enumerate(script.statements):
            if hooks.before:
                await hooks.before(statement)
            try:
                await _execute(conn, statement)
            except psycopg.Error as e:
                failure = _failure(script, statement, e, applied=committed)
                await _abandon_open_block(conn)
                if hooks.failed:
                    await hooks.failed(statement, failure)
                raise failure from None
            if hooks.after:
                await hooks.after(statement, conn)
            if conn.info.transaction_status == TransactionStatus.IDLE:
                committed = i + 1
    except BaseException:
        with contextlib.suppress(Exception):
            await _abandon_open_block(conn)
        raise
    if conn.info.transaction_status != TransactionStatus.IDLE:
        await _abandon_open_block(conn)
        opening = script.statements[committed]
        raise StatementFailed(source=script.source, line=opening.line, statement=opening.first_line,
                              sqlstate=None,
                              server_message="the transaction opened here is never committed (rolled back)",
                              transactional=False, applied=committed)


async def _abandon_open_block(conn: psycopg.AsyncConnection) -> None:
    status = conn.info.transaction_status
    if not conn.closed and status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
        await conn.execute("ROLLBACK")
