"""What the linter knows of the schema: the live catalog (when a database is at hand) and
what the scripts themselves did before the statement being judged. Both matter for the
same questions: does this table exist already (and so carry traffic), what type does this
column have, is it already proven NOT NULL, was this constraint added NOT VALID just now?"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pglast import ast, enums, parse_sql, parser

from shipyard.database.rules.types import ColumnType

TableKey = tuple[str, str]
"""(schema, name)."""

ATT = enums.AlterTableType
CON = enums.ConstrType


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType | None
    not_null: bool = False


@dataclass(frozen=True)
class CheckConstraint:
    name: str
    expression: str
    """As pg_get_expr() prints it, e.g. '(email IS NOT NULL)'."""
    validated: bool = True


@dataclass(frozen=True)
class Table:
    schema: str
    name: str
    columns: Mapping[str, Column] = field(default_factory=dict)
    rows: int | None = None
    """The planner's row estimate (pg_class.reltuples); None when the table was never analyzed."""
    checks: tuple[CheckConstraint, ...] = ()
    partitioned: bool = False
    bytes: int | None = None
    """pg_relation_size() of its main fork when the catalog was read: 0 means no row is stored.
    None for a partitioned table or one with inheritance children (their rows are elsewhere)."""
    column_indexes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """column -> the indexes that depend on it (key or expression), which a type change rebuilds."""
    index_defs: Mapping[str, str] = field(default_factory=dict)
    """index -> its CREATE INDEX statement (pg_get_indexdef)."""
    constraint_indexes: frozenset[str] = frozenset()
    """Indexes that back a PRIMARY KEY / UNIQUE / EXCLUDE constraint (DROP INDEX cannot remove them)."""
    access_method: str | None = None
    tablespace: str | None = None
    """Where its files are (the database's default tablespace when it names none)."""

    @property
    def key(self) -> TableKey:
        return (self.schema, self.name)


@dataclass(frozen=True)
class Catalog:
    """The live schema as far as the rules need it. Build it with `load_catalog(conn)` or by hand."""

    tables: Mapping[TableKey, Table] = field(default_factory=dict)
    indexes: Mapping[TableKey, TableKey] = field(default_factory=dict)
    """index -> the table it is on."""
    functions: Mapping[str, str] = field(default_factory=dict)
    """'name' and 'schema.name' -> provolatile of its most volatile overload ('i', 's' or 'v')."""
    search_path: tuple[str, ...] = ("public",)

    @classmethod
    def of(cls, tables: Iterable[Table], indexes: Mapping[TableKey, TableKey] | None = None,
           functions: Mapping[str, str] | None = None, search_path: tuple[str, ...] = ("public",)) -> Catalog:
        return cls(tables={t.key: t for t in tables}, indexes=dict(indexes or {}), functions=dict(functions or {}),
                   search_path=search_path)


def walk(node: Any) -> Iterator[Any]:
    """Every AST node under `node`, itself included."""
    if isinstance(node, ast.Node):
        yield node
        for name in node:
            yield from walk(getattr(node, name))
    elif isinstance(node, (tuple, list)):
        for item in node:
            yield from walk(item)


def qualified(names: Any) -> tuple[str | None, str]:
    """(schema or None, name) from a parser name list such as DROP's objects."""
    parts = [n.sval for n in names]
    return (parts[-2] if len(parts) > 1 else None, parts[-1])


def not_null_columns(expr: Any) -> frozenset[str]:
    """Columns a CHECK expression proves NOT NULL: `col IS NOT NULL`, alone or AND-ed with others
    (the proof PostgreSQL >= 12 accepts to skip SET NOT NULL's scan)."""
    if isinstance(expr, ast.NullTest) and expr.nulltesttype == enums.NullTestType.IS_NOT_NULL \
            and isinstance(expr.arg, ast.ColumnRef) and isinstance(expr.arg.fields[-1], ast.String):
        return frozenset({expr.arg.fields[-1].sval})
    if isinstance(expr, ast.BoolExpr) and expr.boolop == enums.BoolExprType.AND_EXPR:
        return frozenset().union(*(not_null_columns(a) for a in expr.args))
    return frozenset()


@lru_cache(maxsize=1024)
def _not_null_columns_of_text(expression: str) -> frozenset[str]:
    try:
        return not_null_columns(parse_sql(f"SELECT 1 WHERE {expression}")[0].stmt.whereClause)
    except (parser.ParseError, AttributeError, IndexError):
        return frozenset()


@dataclass
class ScriptConstraint:
    """A constraint the scripts added: enough to judge a later VALIDATE or SET NOT NULL."""
    kind: str
    """'check', 'foreign key' or 'not null'."""
    not_null: frozenset[str]
    validated: bool
    tx: int | None
    """The transaction that added it NOT VALID (None: validated or from the catalog)."""


def _is_not_null(col: Any) -> bool:
    return bool(col.is_not_null) or any(isinstance(c, ast.Constraint) and c.contype in (CON.CONSTR_NOTNULL,
                                        CON.CONSTR_PRIMARY) for c in col.constraints or ())


class SchemaModel:
    """The catalog, overlaid with the effects of the statements seen so far."""

    def __init__(self, catalog: Catalog | None = None) -> None:
        self.catalog = catalog or Catalog()
        self.created: set[TableKey] = set()
        self.dropped: set[TableKey] = set()
        self.columns: dict[tuple[TableKey, str], Column | None] = {}
        self.constraints: dict[tuple[TableKey, str], ScriptConstraint] = {}
        self.indexes: dict[TableKey, TableKey | None] = {}
        self.functions: dict[str, str] = {}
        self.renamed_from: dict[TableKey, TableKey] = {}
        self.enum_values: dict[str, tuple[str, int]] = {}
        self.written: set[TableKey] = set()
        """Tables the scripts insert rows into (no longer known to be empty)."""
        self.index_columns: dict[TableKey, frozenset[str]] = {}
        """Indexes the scripts create -> the plain columns they index."""
        """Enum labels added by ALTER TYPE ... ADD VALUE: label -> (type, transaction that added it)."""

    # -- questions the rules ask ------------------------------------------------------------------

    def resolve(self, rv: Any) -> TableKey:
        """A RangeVar (or (schema, name)) as the key the server would resolve it to."""
        schema, name = (rv.schemaname, rv.relname) if isinstance(rv, ast.RangeVar) else rv
        if schema:
            return (schema, name)
        for s in self.catalog.search_path:
            if (s, name) in self.created or (s, name) in self.catalog.tables:
                return (s, name)
        return (self.catalog.search_path[0] if self.catalog.search_path else "public", name)

    def is_new(self, key: TableKey) -> bool:
        """Created by the scripts: no release uses it yet, and it holds only what the scripts put in."""
        return key in self.created

    def catalog_table(self, key: TableKey) -> Table | None:
        if key in self.created:
            return None
        return self.catalog.tables.get(self.renamed_from.get(key, key))

    def column(self, key: TableKey, name: str) -> Column | None:
        if (key, name) in self.columns:
            return self.columns[(key, name)]
        table = self.catalog_table(key)
        return table.columns.get(name) if table else None

    def proven_not_null(self, key: TableKey, column: str) -> bool:
        """A validated CHECK constraint proves the column has no NULLs."""
        if any(k == key and c.validated and column in c.not_null for (k, _), c in self.constraints.items()):
            return True
        table = self.catalog_table(key)
        return bool(table) and any(
            c.validated and (key, c.name) not in self.constraints and column in _not_null_columns_of_text(c.expression)
            for c in table.checks)

    def constraint(self, key: TableKey, name: str) -> ScriptConstraint | None:
        found = self.constraints.get((key, name))
        if found:
            return found
        table = self.catalog_table(key)
        for c in table.checks if table else ():
            if c.name == name:
                return ScriptConstraint("check", _not_null_columns_of_text(c.expression), c.validated, None)
        return None

    def index_table(self, key: TableKey) -> TableKey | None:
        if key in self.indexes:
            return self.indexes[key]
        return self.catalog.indexes.get(key)

    def resolve_index(self, schema: str | None, name: str) -> TableKey:
        if schema:
            return (schema, name)
        for s in self.catalog.search_path:
            if (s, name) in self.indexes or (s, name) in self.catalog.indexes:
                return (s, name)
        return (self.catalog.search_path[0] if self.catalog.search_path else "public", name)

    def volatility(self, name: str) -> str | None:
        return self.functions.get(name) or self.catalog.functions.get(name)

    def rows(self, key: TableKey) -> int | None:
        table = self.catalog_table(key)
        return table.rows if table else None

    def empty(self, key: TableKey) -> bool:
        """An existing table that stores no row (its file was empty when the catalog was read and
        the scripts wrote nothing into it): rewriting it copies nothing."""
        table = self.catalog_table(key)
        return table is not None and table.bytes == 0 and key not in self.written

    def index_def(self, key: TableKey, index: str) -> str | None:
        """Its CREATE INDEX statement; None when unknown or when it backs a constraint."""
        table = self.catalog_table(key)
        return table.index_defs.get(index) if table and index not in table.constraint_indexes else None

    def indexes_on(self, key: TableKey, column: str) -> list[str]:
        """Names of the indexes on the table that a change of the column's type rebuilds."""
        table = self.catalog_table(key)
        found = [name for name in (table.column_indexes.get(column, ()) if table else ())
                 if self.indexes.get((table.schema, name), key) is not None]
        found += [ikey[1] for ikey, cols in self.index_columns.items()
                  if column in cols and self.indexes.get(ikey) == key]
        return found

    def partitioned(self, key: TableKey) -> bool:
        table = self.catalog_table(key)
        return bool(table and table.partitioned)

    # -- learning from a statement that ran ---------------------------------------------------------

    def apply(self, node: Any, tx: int) -> None:
        if isinstance(node, ast.CreateStmt):
            self._create_table(node)
        elif isinstance(node, ast.CreateTableAsStmt) and node.into is not None:
            self.created.add(self.resolve(node.into.rel))
        elif isinstance(node, ast.AlterTableStmt) and node.objtype == enums.ObjectType.OBJECT_TABLE:
            key = self.resolve(node.relation)
            for cmd in node.cmds or ():
                if isinstance(cmd, ast.AlterTableCmd):
                    self._alter(key, cmd, tx)
        elif isinstance(node, ast.RenameStmt):
            self._rename(node)
        elif isinstance(node, ast.DropStmt):
            self._drop(node)
        elif isinstance(node, ast.IndexStmt) and node.idxname:
            table = self.resolve(node.relation)
            self.indexes[(table[0], node.idxname)] = table
            self.index_columns[(table[0], node.idxname)] = frozenset(
                p.name for p in node.indexParams or () if isinstance(p, ast.IndexElem) and p.name)
        elif isinstance(node, (ast.InsertStmt, ast.MergeStmt)) and node.relation is not None:
            self.written.add(self.resolve(node.relation))
        elif isinstance(node, ast.CopyStmt) and node.is_from and node.relation is not None:
            self.written.add(self.resolve(node.relation))
        elif isinstance(node, ast.AlterEnumStmt) and node.newVal and not node.oldVal:
            self.enum_values[node.newVal] = (".".join(n.sval for n in node.typeName), tx)
        elif isinstance(node, ast.CreateFunctionStmt):
            volatility = next((o.arg.sval[0] for o in node.options or ()
                               if o.defname == "volatility" and isinstance(o.arg, ast.String)), "v")
            names = [n.sval for n in node.funcname]
            self.functions[names[-1]] = volatility
            self.functions[".".join(names)] = volatility

    def _create_table(self, node: Any) -> None:
        key = self.resolve(node.relation)
        self.created.add(key)
        self.dropped.discard(key)
        for elt in node.tableElts or ():
            if isinstance(elt, ast.ColumnDef):
                self._add_column(key, elt, tx=None)
            elif isinstance(elt, ast.Constraint):
                self._add_constraint(key, elt, tx=None)

    def _add_column(self, key: TableKey, col: Any, tx: int | None) -> None:
        self.columns[(key, col.colname)] = Column(col.colname, ColumnType.from_type_name(col.typeName),
                                                  _is_not_null(col))
        for c in col.constraints or ():
            if isinstance(c, ast.Constraint) and c.contype == CON.CONSTR_CHECK:
                self._add_constraint(key, c, tx)

    def _add_constraint(self, key: TableKey, con: Any, tx: int | None) -> None:
        validated = not con.skip_validation
        if con.contype == CON.CONSTR_CHECK:
            kind, proven = "check", not_null_columns(con.raw_expr)
        elif con.contype == CON.CONSTR_FOREIGN:
            kind, proven = "foreign key", frozenset()
        elif con.contype == CON.CONSTR_NOTNULL:
            kind, proven = "not null", frozenset(k.sval for k in con.keys or ())
            if validated:
                self._set_not_null(key, proven, True)
        elif con.contype == CON.CONSTR_PRIMARY:
            self._set_not_null(key, frozenset(k.sval for k in con.keys or ()), True)
            return
        else:
            return
        name = con.conname or f"<unnamed {len(self.constraints)}>"
        self.constraints[(key, name)] = ScriptConstraint(kind, proven, validated, None if validated else tx)

    def _set_not_null(self, key: TableKey, columns: Iterable[str], value: bool) -> None:
        for name in columns:
            col = self.column(key, name)
            self.columns[(key, name)] = Column(name, col.type if col else None, value)

    def _alter(self, key: TableKey, cmd: Any, tx: int) -> None:
        sub = cmd.subtype
        if sub == ATT.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
            self._add_column(key, cmd.def_, tx)
        elif sub == ATT.AT_AlterColumnType and isinstance(cmd.def_, ast.ColumnDef):
            col = self.column(key, cmd.name)
            self.columns[(key, cmd.name)] = Column(cmd.name, ColumnType.from_type_name(cmd.def_.typeName),
                                                   bool(col and col.not_null))
        elif sub in (ATT.AT_SetNotNull, ATT.AT_DropNotNull):
            self._set_not_null(key, [cmd.name], sub == ATT.AT_SetNotNull)
        elif sub == ATT.AT_DropColumn:
            self.columns[(key, cmd.name)] = None
        elif sub == ATT.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
            self._add_constraint(key, cmd.def_, tx)
        elif sub == ATT.AT_ValidateConstraint:
            found = self.constraint(key, cmd.name)
            if found:
                found.validated, found.tx = True, None
                self.constraints[(key, cmd.name)] = found
        elif sub == ATT.AT_DropConstraint:
            self.constraints.pop((key, cmd.name), None)

    def _rename(self, node: Any) -> None:
        if node.relation is None:
            return
        key = self.resolve(node.relation)
        if node.renameType == enums.ObjectType.OBJECT_COLUMN:
            col = self.column(key, node.subname)
            self.columns[(key, node.subname)] = None
            self.columns[(key, node.newname)] = Column(node.newname, col.type if col else None,
                                                       bool(col and col.not_null))
        elif node.renameType == enums.ObjectType.OBJECT_TABLE:
            new = (key[0], node.newname)
            if key in self.created:
                self.created.discard(key)
                self.created.add(new)
            else:
                self.renamed_from[new] = self.renamed_from.get(key, key)
            for (k, name), col in list(self.columns.items()):
                if k == key:
                    self.columns[(new, name)] = col
            self.dropped.add(key)

    def _drop(self, node: Any) -> None:
        if node.removeType == enums.ObjectType.OBJECT_TABLE:
            for names in node.objects or ():
                key = self.resolve(qualified(names))
                self.created.discard(key)
                self.dropped.add(key)
        elif node.removeType == enums.ObjectType.OBJECT_INDEX:
            for names in node.objects or ():
                self.indexes[self.resolve_index(*qualified(names))] = None
