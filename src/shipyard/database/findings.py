"""What the linter says about one statement: the rule, where, the lock it takes, what it
does to the table, whether the release that runs now still works after it, and the safe
way to write it. Plain data, so the CLI, the API and the audit log show the same thing."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]
Effect = Literal["rewrite", "scan", "none"]


@dataclass(frozen=True)
class Finding:
    rule: str
    """Stable id, e.g. 'add-column-volatile-default'; what `-- shipyard:ignore` names."""
    severity: Severity
    """error: unsafe for a zero-downtime deploy (stops it); warning: worth a look."""
    source: str
    line: int
    statement: str
    """The statement's first line."""
    message: str
    """What is wrong, in one sentence."""
    fix: str
    """The safe rewrite."""
    lock: str | None = None
    """The strongest table lock it takes, e.g. 'ACCESS EXCLUSIVE'."""
    table: str | None = None
    effect: Effect = "none"
    """rewrite: every row is copied; scan: every row is read under the lock; none."""
    breaks_old_release: bool = False
    """The release running now fails against the schema after this (contract only)."""
    ignored: str | None = None
    """The reason given in `-- shipyard:ignore`, if the finding was silenced."""

    @property
    def location(self) -> str:
        return f"{self.source}:{self.line}"

    @property
    def blocking(self) -> bool:
        """Stops a deploy (unless --allow-unsafe)."""
        return self.severity == "error" and self.ignored is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
