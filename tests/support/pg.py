"""Throwaway PostgreSQL databases for tests: a unique name each, dropped even when the test fails."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg

SERVER = "postgresql://postgres@127.0.0.1:5432"
ADMIN_URL = f"{SERVER}/test"


@asynccontextmanager
async def throwaway_db(prefix: str = "sytest") -> AsyncIterator[str]:
    """Yield the URL of a new empty database; drop it (and its sessions) afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await psycopg.AsyncConnection.connect(ADMIN_URL, autocommit=True)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"{SERVER}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def query(url: str, sql: str, *args: object) -> list[tuple]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(sql, args or None)
        return await cur.fetchall() if cur.description else []
