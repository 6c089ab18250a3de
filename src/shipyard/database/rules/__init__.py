"""The lint rules, one module per topic. Importing this package registers them all; a
statement's findings come in registration order, with missing-lock-timeout last (it is
about how the statement waits, the others about what it does)."""

from shipyard.database.rules import (  # noqa: F401
    columns,
    constraints,
    coverage,
    data,
    enum_values,
    indexes,
    locking,
    maintenance,
    tables,
)
from shipyard.database.rules.base import CHECKS, RULES, Context, RuleInfo

CHECKS.sort(key=lambda fn: fn is locking.missing_lock_timeout)

__all__ = ["CHECKS", "RULES", "Context", "RuleInfo"]
