"""Connections to the target PostgreSQL with failures a user can act on, and the URL
helpers the scratch copy needs (same server, another database; passwords never shown)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg

from shipyard.errors import ShipyardError
from shipyard.redaction import redact_url as redact

__all__ = ["redact"]

APPLICATION_NAME = "shipyard"


class DatabaseError(ShipyardError):
    """The database cannot be reached, or refused what shipyard asked of it."""


class DatabaseUnavailable(DatabaseError):
    """Cannot connect: down, wrong address, wrong credentials, no such database."""


def with_database(url: str, dbname: str) -> str:
    """The same server and credentials, another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def database_name(url: str) -> str:
    path = urlsplit(url).path.lstrip("/")
    return path or (urlsplit(url).username or "postgres")


async def connect(url: str, *, autocommit: bool = True, timeout: float = 5.0,
                  application_name: str = APPLICATION_NAME) -> psycopg.AsyncConnection:
    """An async connection, or DatabaseUnavailable saying what failed and what to check."""
    try:
        return await psycopg.AsyncConnection.connect(url, autocommit=autocommit, connect_timeout=max(1, int(timeout)),
                                                     application_name=application_name)
    except psycopg.OperationalError as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise DatabaseUnavailable(
            f"cannot connect to {redact(url)}: {reason}",
            "is PostgreSQL running there, does the database exist, and do database.url "
            "(and PGPASSWORD / ~/.pgpass) carry the right credentials? nothing was changed") from None
    except (psycopg.ProgrammingError, ValueError) as e:          # a malformed URL / conninfo
        raise DatabaseUnavailable(f"bad database URL {redact(url)}: {e}",
                                  "database.url looks like postgresql://user@host:5432/dbname") from None


async def server_version(conn: psycopg.AsyncConnection) -> int:
    """server_version_num, e.g. 150020 for 15.20."""
    cur = await conn.execute("SHOW server_version_num")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


def major_of(version_num: int) -> int:
    """150020 -> 15 (also accepts a bare major like 15)."""
    return version_num // 10000 if version_num >= 10000 else version_num
