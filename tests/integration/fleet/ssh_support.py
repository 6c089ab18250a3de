"""SSH options and targets for the namespace hosts (support/ssh_options.py), and the skip
for machines that cannot make namespaces."""

from __future__ import annotations

import pytest

from support.netns_hosts import unusable_reason
from support.ssh_options import QUICK_BACKOFF, options_for, targets

__all__ = ["QUICK_BACKOFF", "need_namespaces", "options_for", "targets"]


def need_namespaces() -> None:
    """Skip (with the precise reason) only when this process cannot make namespaces."""
    reason = unusable_reason()
    if reason:
        pytest.skip(reason)
