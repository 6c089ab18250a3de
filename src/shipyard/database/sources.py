"""Where migrations come from: a directory of NNNN_name.sql files, or an Alembic project
through Alembic's offline SQL generation. Either way the result is the same list of
`Migration`s in apply order, each already parsed (so bad SQL fails before anything runs)."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .backfill_spec import SUFFIX, Backfill, parse_backfill
from .connect import DatabaseError
from .statements import Script, parse_script

SQL_NAME = re.compile(r"^(\d+)_([A-Za-z0-9][A-Za-z0-9_.-]*)\.sql$")
BACKFILL_NAME = re.compile(r"^(\d+)_([A-Za-z0-9][A-Za-z0-9_-]*)\.backfill\.yaml$")
ALEMBIC_STEP = re.compile(r"^-- Running upgrade\s+(\S*)\s*->\s*(\S+)\s*$", re.MULTILINE)


class MigrationSourceError(DatabaseError):
    """The migrations cannot be read: missing directory, bad file name, duplicate version, Alembic failure."""

    exit_code = 2


@dataclass(frozen=True)
class Migration:
    version: str
    """'0003', or an Alembic revision id: what the ledger records and database.target names."""
    name: str
    source: str
    """Path shown in messages (file:line)."""
    text: str
    script: Script
    """No statements for a backfill: it is not one script but many batches (database/backfill.py)."""
    backfill: Backfill | None = None

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.version}_{self.name}"


def _name_of(path: Path) -> re.Match[str] | None:
    return (BACKFILL_NAME if path.name.endswith(SUFFIX) else SQL_NAME).match(path.name)


def from_directory(directory: Path) -> list[Migration]:
    """NNNN_name.sql files and NNNN_name.backfill.yaml declared backfills, in one numeric order;
    other files (README...) are not migrations."""
    if not directory.is_dir():
        raise MigrationSourceError(f"migrations directory {directory} does not exist",
                                   "create it, or fix database.migrations in the spec")
    found: dict[int, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql" and not path.name.endswith(SUFFIX):
            continue
        m = _name_of(path)
        if not m:
            raise MigrationSourceError(f"{path}: a migration file is named NNNN_name.sql (e.g. 0003_add_sku.sql) "
                                       f"or NNNN_name{SUFFIX}", "rename it so its order is explicit")
        number = int(m.group(1))
        if number in found:
            raise MigrationSourceError(f"{path} and {found[number]} have the same version {m.group(1)}",
                                       "give each migration its own number")
        found[number] = path
    result = []
    for _, path in sorted(found.items()):
        m = _name_of(path)
        assert m is not None
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise MigrationSourceError(f"cannot read {path}: {e}", "check the file") from None
        if path.name.endswith(SUFFIX):
            result.append(Migration(version=m.group(1), name=m.group(2), source=str(path), text=text,
                                    script=Script(source=str(path), statements=(), transactional=True),
                                    backfill=parse_backfill(text, str(path))))
            continue
        result.append(Migration(version=m.group(1), name=m.group(2), source=str(path), text=text,
                                script=parse_script(text, str(path))))
    return result


def alembic_argv() -> list[str]:
    """The project's `alembic` if it is on PATH (its env.py may import the project), else ours."""
    exe = shutil.which("alembic")
    return [exe] if exe else [sys.executable, "-m", "alembic"]


def from_alembic(ini: Path, timeout: float = 120.0) -> list[Migration]:
    """Every revision from base to head, as the SQL Alembic's offline mode writes for it.
    Each revision keeps its own alembic_version bookkeeping, so Alembic agrees with us afterwards."""
    if not ini.is_file():
        raise MigrationSourceError(f"alembic config {ini} does not exist", "fix database.alembic in the spec")
    argv = [*alembic_argv(), "-c", str(ini), "upgrade", "head", "--sql"]
    try:
        done = subprocess.run(argv, cwd=ini.parent, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise MigrationSourceError(f"cannot run {' '.join(argv)}: {e}", "is alembic installed?") from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-8:])
        raise MigrationSourceError(f"alembic could not generate SQL for {ini} (exit {done.returncode}):\n{tail}",
                                   "run `alembic upgrade head --sql` yourself to see the whole error")
    return split_alembic_sql(done.stdout, str(ini))


def split_alembic_sql(sql: str, source: str) -> list[Migration]:
    """Cut Alembic's offline script at its `-- Running upgrade A -> B` markers. The BEGIN/COMMIT
    around the whole script are dropped: shipyard runs each revision in its own transaction.
    What comes before the first marker (CREATE TABLE alembic_version) goes with the first revision."""
    steps = list(ALEMBIC_STEP.finditer(sql))
    result: list[Migration] = []
    for i, m in enumerate(steps):
        start = 0 if i == 0 else m.start()
        end = steps[i + 1].start() if i + 1 < len(steps) else len(sql)
        chunk = sql[start:end]
        chunk = re.sub(r"^\s*(BEGIN|COMMIT)\s*;\s*$", "", chunk, flags=re.MULTILINE | re.IGNORECASE)
        first_line = 1 + sql.count("\n", 0, start)
        revision = m.group(2)
        result.append(Migration(version=revision, name=f"alembic_{revision}", source=f"{source}[{revision}]",
                                text=chunk, script=parse_script(chunk, f"{source}[{revision}]", first_line)))
    return result


def up_to(migrations: list[Migration], target: str | None) -> list[Migration]:
    """The migrations up to and including `target` (all of them without one)."""
    if target is None:
        return migrations
    for i, m in enumerate(migrations):
        if m.version == target or (m.version.isdigit() and target.isdigit() and int(m.version) == int(target)):
            return migrations[:i + 1]
    known = ", ".join(m.version for m in migrations[-5:]) or "none"
    raise MigrationSourceError(f"database.target {target!r} is not one of the migrations (latest: {known})",
                               "name an existing version, or remove database.target to apply all of them")
