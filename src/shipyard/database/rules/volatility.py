"""How volatile a DEFAULT expression is. Since PostgreSQL 11 ADD COLUMN ... DEFAULT stores a
non-volatile default once in the catalog; a volatile one must be computed per row, which
rewrites the table. The catalog (when loaded) and the scripts' own CREATE FUNCTION know
user functions; the lists below cover the built-ins and common extensions without one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pglast import ast

from shipyard.database.rules.schema import walk

VOLATILE = frozenset({
    "random", "random_normal", "clock_timestamp", "timeofday", "gen_random_uuid", "uuidv4", "uuidv7",
    "uuid_generate_v1", "uuid_generate_v1mc", "uuid_generate_v4", "gen_random_bytes", "nextval", "setval",
    "currval", "lastval", "setseed", "pg_sleep", "txid_current_if_assigned",
})

NOT_VOLATILE = frozenset({
    # stable
    "now", "statement_timestamp", "transaction_timestamp", "current_setting", "current_database",
    "current_schema", "to_char", "to_date", "to_number", "to_jsonb", "to_json", "format", "concat", "concat_ws",
    "jsonb_build_object", "jsonb_build_array", "json_build_object", "json_build_array", "make_timestamptz",
    "txid_current", "pg_current_xact_id", "array_to_string", "date_trunc", "date_part", "extract", "age",
    "timezone", "to_timestamp", "length", "inet_client_addr",
    # immutable
    "lower", "upper", "initcap", "btrim", "ltrim", "rtrim", "trim", "substr", "substring", "replace", "left",
    "right", "lpad", "rpad", "repeat", "md5", "sha256", "sha512", "encode", "decode", "abs", "round", "floor",
    "ceil", "ceiling", "trunc", "greatest", "least", "coalesce", "nullif", "make_date", "make_time",
    "make_timestamp", "make_interval", "array_fill", "array_length", "string_to_array", "split_part",
    "regexp_replace", "char_length", "octet_length", "strpos", "jsonb_typeof", "power", "sqrt", "mod",
})

Lookup = Callable[[str], "str | None"]


def function_names(expr: Any) -> list[str]:
    """Names of the functions an expression calls, schema-qualified when written so."""
    return [".".join(p.sval for p in n.funcname if isinstance(p, ast.String)).lower()
            for n in walk(expr) if isinstance(n, ast.FuncCall)]


def classify(expr: Any, lookup: Lookup) -> tuple[str, list[str]]:
    """('volatile' | 'unknown' | 'stable', the functions responsible)."""
    volatile: list[str] = []
    unknown: list[str] = []
    for name in function_names(expr):
        bare = name.rsplit(".", 1)[-1]
        known = lookup(name) or lookup(bare)
        if known == "v" or (known is None and bare in VOLATILE):
            volatile.append(name)
        elif known is None and bare not in NOT_VOLATILE:
            unknown.append(name)
    if volatile:
        return "volatile", volatile
    if unknown:
        return "unknown", unknown
    return "stable", []


def is_null_constant(expr: Any) -> bool:
    while isinstance(expr, ast.TypeCast):
        expr = expr.arg
    return isinstance(expr, ast.A_Const) and bool(expr.isnull)
