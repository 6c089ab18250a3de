"""Column types as the linter compares them, and which ALTER COLUMN TYPE changes PostgreSQL
does without touching a row. Types come from two places that must agree: the scripts'
AST and the live catalog's format_type(), so both go through the same parser."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pglast import ast, parse_sql, parser

SERIAL_TYPES = {"serial": "int4", "serial4": "int4", "bigserial": "int8", "serial8": "int8",
                "smallserial": "int2", "serial2": "int2"}
_SQL_NAMES = {"int2": "smallint", "int4": "integer", "int8": "bigint", "bpchar": "char", "float4": "real",
              "float8": "double precision", "bool": "boolean"}
_PRECISION_TYPES = frozenset({"timestamp", "timestamptz", "time", "timetz"})


@dataclass(frozen=True)
class ColumnType:
    name: str
    """PostgreSQL's internal name ('varchar', 'int4', 'timestamptz'); 'schema.name' for user types."""
    mods: tuple[int, ...] = ()
    """Type modifiers as written: varchar(20) -> (20,), numeric(10,2) -> (10, 2)."""
    array: bool = False
    serial: bool = False
    """Written as serial / bigserial / smallserial (the type is the integer, plus a sequence default)."""

    def __str__(self) -> str:
        text = _SQL_NAMES.get(self.name, self.name)
        if self.mods:
            text += "(" + ",".join(str(m) for m in self.mods) + ")"
        return text + ("[]" if self.array else "")

    @classmethod
    def from_type_name(cls, node: Any) -> ColumnType | None:
        """From a pglast TypeName; None for what cannot be known statically (%TYPE)."""
        if not isinstance(node, ast.TypeName) or node.pct_type or not node.names:
            return None
        parts = [n.sval.lower() if isinstance(n, ast.String) else "" for n in node.names]
        name = parts[-1]
        if len(parts) > 1 and parts[-2] != "pg_catalog":
            name = f"{parts[-2]}.{name}"
        mods: list[int] = []
        for m in node.typmods or ():
            if isinstance(m, ast.A_Const) and isinstance(m.val, ast.Integer):
                mods.append(m.val.ival)
            else:
                return cls(name=name, array=bool(node.arrayBounds))   # e.g. interval field names
        serial = name in SERIAL_TYPES
        return cls(name=SERIAL_TYPES.get(name, name), mods=tuple(mods), array=bool(node.arrayBounds),
                   serial=serial)

    @classmethod
    def parse(cls, text: str) -> ColumnType | None:
        """From SQL type syntax, e.g. format_type()'s 'character varying(20)'."""
        return _parse_cached(text)


@lru_cache(maxsize=1024)
def _parse_cached(text: str) -> ColumnType | None:
    try:
        stmt = parse_sql(f"SELECT NULL::{text}")[0].stmt
        return ColumnType.from_type_name(stmt.targetList[0].val.typeName)
    except (parser.ParseError, AttributeError, IndexError):
        return None


def rewrite_free(old: ColumnType, new: ColumnType) -> bool:
    """Whether ALTER COLUMN TYPE old -> new keeps every stored value as it is (binary coercible,
    no length or precision to re-check), so PostgreSQL neither rewrites nor scans the table.
    timestamp <-> timestamptz is left out: it depends on the session's TimeZone."""
    if (old.name, old.mods, old.array) == (new.name, new.mods, new.array):
        return True
    if old.array or new.array:
        return False
    o, n = old.name, new.name
    if o in ("varchar", "varbit") and n == o:
        return not new.mods or (bool(old.mods) and new.mods[0] >= old.mods[0])
    if o == "varchar" and n == "text":
        return True
    if o == "text" and n == "varchar":
        return not new.mods
    if o == "numeric" and n == "numeric":
        if not new.mods:
            return True
        if not old.mods:
            return False
        old_scale = old.mods[1] if len(old.mods) > 1 else 0
        new_scale = new.mods[1] if len(new.mods) > 1 else 0
        return new_scale == old_scale and new.mods[0] >= old.mods[0]
    if o in _PRECISION_TYPES and n == o:
        return not new.mods or (bool(old.mods) and new.mods[0] >= old.mods[0])
    return (o, n) == ("cidr", "inet")


def timezone_dependent(old: ColumnType, new: ColumnType) -> bool:
    """timestamp <-> timestamptz keeping full precision: rewrite-free on PG >= 12 when the session's
    TimeZone is UTC. A precision below 6 on the new type adds a rounding step: always a rewrite."""
    return ({old.name, new.name} == {"timestamp", "timestamptz"} and not old.array and not new.array
            and (not new.mods or new.mods[0] >= 6))


WIDENING_TARGETS = {"text": "varchar or text", "varchar": "varchar or text", "numeric": "numeric",
                    "inet": "cidr or inet"}
"""Targets that are usually a widening: rewrite-free from the types named, a rewrite from anything else."""


def widening_source(new: ColumnType) -> str | None:
    if new.array or new.mods:
        return None
    return WIDENING_TARGETS.get(new.name)
