"""A throw-away copy of the target database on the same server: its schema and a sample of
its rows, so migrations can be tried for real (locks, rewrites, the old and new release
side by side) without touching the data anyone uses. Same server, so same version,
extensions, roles and settings. It is dropped however the check ends; one left behind by a
killed process is swept by the next check."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from shipyard.procfs import pid_alive

from .connect import DatabaseError, connect, major_of, redact, server_version, with_database

PREFIX = "shipyard_check_"
NAME_RE = re.compile(rf"^{PREFIX}(\d+)_[0-9a-f]+$")
DROP_ATTEMPTS = 3
STDERR_TAIL_LINES = 15
SYSTEM_SCHEMAS = "('pg_catalog', 'information_schema')"

log = logging.getLogger(__name__)


class ScratchError(DatabaseError):
    """The scratch copy could not be made."""


@dataclass
class ScratchDatabase:
    name: str
    url: str
    source_url: str
    rows_copied: dict[str, int] = field(default_factory=dict)
    """table -> rows of the sample copied into it."""
    sample_skipped: dict[str, str] = field(default_factory=dict)
    """table (or materialized view / sequence) -> why its data could not be copied."""

    @classmethod
    @contextlib.asynccontextmanager
    async def copy_of(cls, target_url: str, *, sample_rows: int = 1000,
                      table_rows: Mapping[str, int] | None = None) -> AsyncIterator[ScratchDatabase]:
        """`async with ScratchDatabase.copy_of(url) as scratch:` - dropped on any exit.
        `table_rows`: rows for the tables it names (as display_name), instead of sample_rows."""
        await drop_stale_scratch(target_url)
        name = f"{PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
        created: list[int] = []             # the server version, once CREATE DATABASE may have happened
        try:
            try:
                scratch = await cls._make(target_url, name, sample_rows, dict(table_rows or {}), created)
            except psycopg.Error as e:
                hint = ("the user in database.url needs the CREATEDB privilege on that server"
                        if isinstance(e, psycopg.errors.InsufficientPrivilege)
                        else "the scratch copy was dropped; nothing was changed in the target database")
                raise ScratchError(
                    f"cannot make a scratch copy of {redact(target_url)}: {' '.join(str(e).split())}", hint) from None
            yield scratch
        finally:
            if created:
                await _drop_surely(target_url, name, created[0])

    @classmethod
    async def _make(cls, target_url: str, name: str, sample_rows: int, table_rows: dict[str, int],
                    created: list[int]) -> ScratchDatabase:
        async with await connect(target_url) as admin:
            version = await server_version(admin)
            options = await _creation_options(admin)
            created.append(version)         # before CREATE: a cancel may land after the server did it
            await admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ").format(sql.Identifier(name))
                                + options)
            await admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                sql.Identifier(name),
                sql.Literal(f"shipyard check scratch copy host={socket.gethostname()} pid={os.getpid()}")))
        scratch = cls(name=name, url=with_database(target_url, name), source_url=target_url)
        await _copy_schema(target_url, scratch.url, major_of(version))
        if sample_rows > 0 or any(table_rows.values()):
            await _copy_sample(scratch, sample_rows, table_rows)
        return scratch


async def drop_stale_scratch(url: str) -> list[str]:
    """Drop scratch databases left by a check from this machine whose process is gone
    (SIGKILL, power loss). Returns the names dropped."""
    host = socket.gethostname()
    dropped: list[str] = []
    async with await connect(url) as conn:
        version = await server_version(conn)
        cur = await conn.execute(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database WHERE datname LIKE %s",
            (PREFIX.replace("_", r"\_") + "%",))
        for datname, comment in await cur.fetchall():
            m = NAME_RE.match(datname)
            if not m or pid_alive(int(m.group(1))):
                continue
            if comment and f"host={host} " not in comment:
                continue                    # made by a check on another machine: its pid means nothing here
            try:
                await _drop(conn, datname, version)
            except psycopg.Error as e:
                log.warning("could not drop stale scratch database %s: %s", datname, e)
            else:
                dropped.append(datname)
    return dropped


async def _creation_options(conn: psycopg.AsyncConnection) -> sql.Composed:
    """The source's encoding and locale, so text sorts and compares the same in the copy."""
    cur = await conn.execute("SELECT pg_encoding_to_char(d.encoding), to_jsonb(d) FROM pg_database d "
                             "WHERE d.datname = current_database()")
    row = await cur.fetchone()
    assert row is not None
    encoding, db = row[0], row[1]
    parts = [sql.SQL("ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
        sql.Literal(encoding), sql.Literal(db["datcollate"]), sql.Literal(db["datctype"]))]
    provider = db.get("datlocprovider", "c")
    locale = db.get("datlocale") or db.get("daticulocale")
    if provider == "i" and locale:
        parts.append(sql.SQL(" LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(locale)))
    elif provider == "b" and locale:
        parts.append(sql.SQL(" LOCALE_PROVIDER builtin BUILTIN_LOCALE {}").format(sql.Literal(locale)))
    return sql.Composed(parts)


def pg_tool(name: str, major: int) -> str:
    """The client of the server's major version: pg_dump refuses a newer server."""
    packaged = Path(f"/usr/lib/postgresql/{major}/bin/{name}")
    if packaged.is_file() and os.access(packaged, os.X_OK):
        return str(packaged)
    found = shutil.which(name)
    if found:
        return found
    raise ScratchError(f"{name} not found: it is needed to copy the schema of a PostgreSQL {major} server",
                       f"install the PostgreSQL {major} client tools (e.g. postgresql-client-{major})")


def _without_password(url: str) -> tuple[str, dict[str, str]]:
    """A URL for argv (visible in `ps`) and the environment that carries the password."""
    env = dict(os.environ)
    parts = urlsplit(url)
    if parts.password is None:
        return url, env
    env["PGPASSWORD"] = unquote(parts.password)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}@{host}")), env


def _tail(stderr: bytes) -> str:
    lines = stderr.decode(errors="replace").strip().splitlines()
    return "\n".join(lines[-STDERR_TAIL_LINES:]) or "(no output)"


async def _copy_schema(source_url: str, scratch_url: str, major: int) -> None:
    """pg_dump --schema-only | psql, through a pipe between the two processes."""
    src, src_env = _without_password(source_url)
    dst, dst_env = _without_password(scratch_url)
    dump_argv = [pg_tool("pg_dump", major), "--schema-only", "--no-owner", "--no-privileges",
                 "--no-publications", "--no-subscriptions", "--no-password", "--dbname", src]
    restore_argv = [pg_tool("psql", major), "--no-psqlrc", "--quiet", "--no-password",
                    "--set", "ON_ERROR_STOP=1", "--single-transaction", "--dbname", dst]
    procs: list[asyncio.subprocess.Process] = []
    read_end, write_end = os.pipe()
    try:
        procs.append(await asyncio.create_subprocess_exec(*dump_argv, stdin=asyncio.subprocess.DEVNULL,
                                                          stdout=write_end, stderr=asyncio.subprocess.PIPE,
                                                          env=src_env))
        procs.append(await asyncio.create_subprocess_exec(*restore_argv, stdin=read_end,
                                                          stdout=asyncio.subprocess.DEVNULL,
                                                          stderr=asyncio.subprocess.PIPE, env=dst_env))
    except BaseException:
        for p in procs:
            p.kill()
            await p.wait()
        raise
    finally:
        os.close(read_end)
        os.close(write_end)
    dump, restore = procs
    try:
        (_, dump_err), (_, restore_err) = await asyncio.gather(dump.communicate(), restore.communicate())
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    if dump.returncode != 0:
        raise ScratchError(f"pg_dump of {redact(source_url)} failed (exit {dump.returncode}):\n"
                           f"{_tail(dump_err)}",
                           "check that pg_dump's major version matches the server's and that the user may "
                           "read the schema")
    if restore.returncode != 0:
        raise ScratchError("restoring the schema into the scratch database failed "
                           f"(exit {restore.returncode}):\n"
                           f"{_tail(restore_err)}",
                           "the schema uses something that cannot be recreated by this user (an extension, a "
                           "tablespace?)")


TABLES_SQL = f"""
SELECT n.nspname, c.relname, array_agg(a.attname::text ORDER BY a.attnum)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
WHERE c.relkind = 'r' AND c.relpersistence <> 't'
  AND n.nspname NOT IN {SYSTEM_SCHEMAS}
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
GROUP BY n.nspname, c.relname
ORDER BY n.nspname, c.relname
"""


def display_name(schema: str, name: str) -> str:
    return name if schema == "public" else f"{schema}.{name}"


async def _copy_sample(scratch: ScratchDatabase, limit: int, table_rows: dict[str, int]) -> None:
    """Up to `limit` rows per table (`table_rows` for the tables it names), streamed with COPY. Foreign keys are not checked for
    the sample (session_replication_role = replica): a child's rows need not find their
    parent among the parent's sampled rows."""
    async with await connect(scratch.source_url) as src, await connect(scratch.url) as dst:
        try:
            await dst.execute("SET session_replication_role = replica")
        except psycopg.errors.InsufficientPrivilege:
            log.warning("cannot set session_replication_role (not a superuser): tables whose sample breaks a "
                        "foreign key stay empty in the scratch copy")
        tables: list[tuple[str, str, list[str]]] = await (await src.execute(TABLES_SQL)).fetchall()
        for schema, name, columns in tables:
            table = display_name(schema, name)
            rows = table_rows.get(table, limit)
            if rows <= 0:
                continue
            try:
                scratch.rows_copied[table] = await _copy_table(src, dst, schema, name, columns, rows)
            except psycopg.Error as e:
                scratch.sample_skipped[table] = " ".join(str(e).split())
                await _recover(src)
                await _recover(dst)
        await _copy_sequences(src, dst, scratch)
        await _refresh_materialized_views(dst, scratch)


async def _copy_table(src: psycopg.AsyncConnection, dst: psycopg.AsyncConnection, schema: str, name: str,
                      columns: list[str], limit: int) -> int:
    ident = sql.Identifier(schema, name)
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    out_sql = sql.SQL("COPY (SELECT {} FROM ONLY {} LIMIT {}) TO STDOUT (FORMAT BINARY)").format(
        cols, ident, sql.Literal(limit))
    in_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(ident, cols)
    async with src.cursor() as out_cur, dst.cursor() as in_cur:
        async with out_cur.copy(out_sql) as out, in_cur.copy(in_sql) as into:
            async for chunk in out:
                await into.write(chunk)
        return max(in_cur.rowcount, 0)


async def _recover(conn: psycopg.AsyncConnection) -> None:
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        await conn.execute("ROLLBACK")


async def _copy_sequences(src: psycopg.AsyncConnection, dst: psycopg.AsyncConnection,
                          scratch: ScratchDatabase) -> None:
    """Where the source's sequences stand, so inserts in the copy do not collide with the sample."""
    cur = await src.execute("SELECT schemaname, sequencename, last_value FROM pg_sequences "
                            f"WHERE last_value IS NOT NULL AND schemaname NOT IN {SYSTEM_SCHEMAS}")
    for schema, name, last_value in await cur.fetchall():
        try:
            await dst.execute("SELECT setval(%s::regclass, %s, true)",
                              (sql.Identifier(schema, name).as_string(dst), last_value))
        except psycopg.Error as e:
            scratch.sample_skipped[display_name(schema, name)] = " ".join(str(e).split())


async def _refresh_materialized_views(dst: psycopg.AsyncConnection, scratch: ScratchDatabase) -> None:
    """A schema-only restore leaves them unpopulated, and reading one would fail in the copy only."""
    cur = await dst.execute("SELECT n.nspname, c.relname FROM pg_class c "
                            "JOIN pg_namespace n ON n.oid = c.relnamespace "
                            f"WHERE c.relkind = 'm' AND n.nspname NOT IN {SYSTEM_SCHEMAS} ORDER BY c.oid")
    for schema, name in await cur.fetchall():
        try:
            await dst.execute(sql.SQL("REFRESH MATERIALIZED VIEW {}").format(sql.Identifier(schema, name)))
        except psycopg.Error as e:
            scratch.sample_skipped[display_name(schema, name)] = " ".join(str(e).split())


async def _drop(conn: psycopg.AsyncConnection, name: str, version: int) -> None:
    ident = sql.Identifier(name)
    if version >= 130000:
        await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        return
    await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident))


async def _drop_with_retries(url: str, name: str, version: int) -> None:
    for attempt in range(1, DROP_ATTEMPTS + 1):
        try:
            async with await connect(url) as conn:
                await _drop(conn, name, version or await server_version(conn))
            return
        except (psycopg.Error, DatabaseError) as e:
            if attempt == DROP_ATTEMPTS:
                log.warning("could not drop scratch database %s on %s: %s (a later check drops it once "
                            "this process is gone)", name, redact(url), e)
                return
            await asyncio.sleep(0.5 * attempt)


async def _drop_surely(url: str, name: str, version: int) -> None:
    """Runs to the end even if the task is cancelled again meanwhile (a second Ctrl-C);
    the cancellation is passed on once the database is gone."""
    task: asyncio.Task[Any] = asyncio.ensure_future(_drop_with_retries(url, name, version))
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
