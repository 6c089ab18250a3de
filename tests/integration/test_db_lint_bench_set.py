"""benchmarks/migration_stall.py's recommended migration set is lint clean on the live catalog
(not even a warning: its backfill is plain statements, not a DO block the linter cannot judge),
and applied as the runner applies it, the backfill fills every row."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

from shipyard.database.connect import connect, server_version
from shipyard.database.lint import lint_scripts, load_catalog
from shipyard.database.statements import parse_script

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
from migration_stall import shipyard_set  # noqa: E402
from migrationtools import FILL  # noqa: E402

URL = "postgresql://postgres@127.0.0.1:5432/test"
ROWS, BATCH = 2_000, 300


async def test_the_recommended_set_is_lint_clean_and_its_backfill_fills_every_row() -> None:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    conn = await connect(URL)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(f"SET search_path = {schema}")
        await conn.execute(FILL.format(rows=ROWS).encode())
        await conn.execute("ANALYZE accounts")
        files = shipyard_set(BATCH, ROWS)
        scripts = [parse_script(text, name) for name, text in files.items()]
        found = lint_scripts(scripts, await server_version(conn), assume_lock_timeout=True,
                             catalog=await load_catalog(conn))
        assert found == []
        assert "DO" not in files["0003_backfill_token.sql"].split()
        for name in ("0002_add_token.sql", "0003_backfill_token.sql"):
            for stmt in parse_script(files[name], name).statements:
                await conn.execute(stmt.sql)
        cur = await conn.execute("SELECT count(*) FILTER (WHERE token IS NULL), count(*) FROM accounts")
        assert await cur.fetchone() == (0, ROWS)
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()
