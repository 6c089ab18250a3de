"""A migration file cut into statements on PostgreSQL's own grammar (pglast), each with
its line, its `-- shipyard:ignore` comments and whether it runs inside a transaction.

How a file is run decides what is safe in it, so it is decided here, once, for the
linter, the dynamic check and the runner alike:
- a file is run as ONE transaction, unless it controls transactions itself (BEGIN /
  COMMIT), says `-- shipyard:no-transaction`, or holds a statement that PostgreSQL refuses
  inside a transaction block (CREATE INDEX CONCURRENTLY, VACUUM, ...);
- otherwise each statement runs on its own (autocommit), and BEGIN ... COMMIT blocks
  written in the file are transactions as usual.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pglast import ast, enums, parse_sql, parser

from shipyard.errors import ShipyardError

NO_TRANSACTION_MARK = "shipyard:no-transaction"
CONTRACT_MARK = "shipyard:contract"
_COMMITS = re.compile(r"\b(COMMIT|ROLLBACK)\b", re.IGNORECASE)
IGNORE_RE = re.compile(r"shipyard:ignore\s+([a-z0-9][a-z0-9-]*)\s*(.*)")


class MigrationSyntaxError(ShipyardError):
    """A migration is not valid SQL for PostgreSQL: nothing of it may be applied."""

    exit_code = 2


@dataclass(frozen=True)
class Statement:
    sql: str
    """The statement's text, without the terminating semicolon."""
    line: int
    """1-based line of the statement's first token in its file."""
    node: Any = field(compare=False, repr=False)
    """The pglast AST node (e.g. ast.AlterTableStmt)."""
    ignores: dict[str, str] = field(default_factory=dict)
    """rule id -> reason, from `-- shipyard:ignore RULE reason` comments above or inside it."""
    in_transaction: bool = False
    """Whether it runs inside a transaction block (the file's, or an explicit BEGIN)."""
    index: int = 0
    """Position in its file (0-based)."""

    @property
    def kind(self) -> str:
        """The AST node's class name, e.g. 'AlterTableStmt'."""
        return type(self.node).__name__

    @property
    def first_line(self) -> str:
        """The statement's first line, for messages and tables."""
        text = " ".join(self.sql.split())
        return text if len(text) <= 100 else text[:97] + "..."


@dataclass(frozen=True)
class Script:
    source: str
    """Where the text came from (a path), for messages."""
    statements: tuple[Statement, ...]
    transactional: bool
    """True: the runner wraps the whole file in one transaction."""
    contract: bool = False
    """The file says `-- shipyard:contract`: the old release cannot run against it."""

    @property
    def lines(self) -> str:
        return f"{self.source}:{self.statements[0].line}" if self.statements else self.source


def cannot_run_in_transaction(node: Any) -> bool:
    """PostgreSQL refuses these inside a transaction block."""
    if isinstance(node, ast.IndexStmt) and node.concurrent:
        return True
    if isinstance(node, ast.DropStmt) and node.concurrent:
        return True
    if isinstance(node, ast.ReindexStmt):
        return any(getattr(p, "defname", "") == "concurrently" for p in (node.params or ()))
    if isinstance(node, ast.VacuumStmt):
        return bool(node.is_vacuumcmd)
    if isinstance(node, (ast.CreatedbStmt, ast.DropdbStmt, ast.AlterSystemStmt, ast.CreateTableSpaceStmt,
                         ast.DropTableSpaceStmt)):
        return True
    if isinstance(node, ast.DoStmt):         # a DO block that commits (batched backfills) must run on its own
        body = " ".join(getattr(a.arg, "sval", "") for a in node.args or () if getattr(a, "defname", "") == "as")
        return bool(_COMMITS.search(body))
    if isinstance(node, ast.AlterTableStmt):
        return any(isinstance(c, ast.AlterTableCmd) and c.subtype == enums.AlterTableType.AT_DetachPartition
                   and getattr(c.def_, "concurrent", False) for c in (node.cmds or ()))
    return False


def transaction_kind(node: Any) -> str | None:
    """'begin', 'end' or None for anything that is not transaction control."""
    if not isinstance(node, ast.TransactionStmt):
        return None
    kind = node.kind
    if kind in (enums.TransactionStmtKind.TRANS_STMT_BEGIN, enums.TransactionStmtKind.TRANS_STMT_START):
        return "begin"
    if kind in (enums.TransactionStmtKind.TRANS_STMT_COMMIT, enums.TransactionStmtKind.TRANS_STMT_ROLLBACK,
                enums.TransactionStmtKind.TRANS_STMT_COMMIT_PREPARED,
                enums.TransactionStmtKind.TRANS_STMT_ROLLBACK_PREPARED,
                enums.TransactionStmtKind.TRANS_STMT_PREPARE):
        return "end"
    return None


def _line_at(text: str, offset: int, first_line: int) -> int:
    return first_line + text.count("\n", 0, offset)


def parse_script(text: str, source: str, first_line: int = 1) -> Script:
    """Raises MigrationSyntaxError with file:line and the parser's message. pglast's offsets
    (statements, tokens, errors) count characters, so the text is cut as str, never as bytes."""
    try:
        stmts = parse_sql(text)
        tokens = parser.scan(text)
    except parser.ParseError as e:
        offset = e.args[1] if len(e.args) > 1 and isinstance(e.args[1], int) else 0
        line = first_line + text.count("\n", 0, offset)      # the parser's offset counts characters
        raise MigrationSyntaxError(f"{source}:{line}: {e.args[0]}",
                                   "fix the SQL; nothing of this migration was applied") from None

    comments = [(t.start, text[t.start:t.end + 1])
                for t in tokens if t.name in ("SQL_COMMENT", "C_COMMENT")]
    no_tx_mark = any(NO_TRANSACTION_MARK in c for _, c in comments)
    contract = any(CONTRACT_MARK in c for _, c in comments)

    spans: list[tuple[int, int, Any]] = []
    for s in stmts:
        start = s.stmt_location or 0
        end = start + s.stmt_len if s.stmt_len else len(text)
        # stmt_location may include leading whitespace/comments on some statements: skip to the first token
        first = next((t.start for t in tokens if start <= t.start < end and t.name not in ("SQL_COMMENT", "C_COMMENT")),
                     start)
        spans.append((first, end, s.stmt))

    explicit_tx = any(transaction_kind(node) for _, _, node in spans)
    transactional = not (no_tx_mark or explicit_tx or any(cannot_run_in_transaction(n) for _, _, n in spans))

    result: list[Statement] = []
    prev_end = 0
    in_block = False
    for i, (first, end, node) in enumerate(spans):
        ignores: dict[str, str] = {}
        for pos, comment in comments:
            if prev_end <= pos < end:
                m = IGNORE_RE.search(comment)
                if m:
                    ignores[m.group(1)] = m.group(2).strip().rstrip("*/").strip()
        tx = transaction_kind(node)
        if tx == "begin":
            in_block = True
        sql = text[first:end].strip().rstrip(";").strip()
        result.append(Statement(sql=sql, line=_line_at(text, first, first_line), node=node, ignores=ignores,
                                in_transaction=transactional or in_block or tx == "end", index=i))
        if tx == "end":
            in_block = False
        prev_end = end
    return Script(source=source, statements=tuple(result), transactional=transactional, contract=contract)
