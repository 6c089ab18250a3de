"""SSH options and targets for the namespace hosts: quick failure detection and a short
backoff, so drops and reconnects fit in a test's seconds (used by the fleet tests and by
the Runtime port suite's SSH side)."""

from __future__ import annotations

import dataclasses
from typing import Any

from shipyard.runtime.ssh.backoff import BackoffPolicy
from shipyard.runtime.ssh.options import SshOptions, SshTarget
from support.netns_hosts import NetnsFleet

QUICK_BACKOFF = BackoffPolicy(initial=0.1, factor=2, cap=1.0, jitter=0.5, stable_after=30)


def options_for(fleet: NetnsFleet, **changes: Any) -> SshOptions:
    base = SshOptions(user=fleet.user, identity=fleet.client_key, known_hosts=fleet.known_hosts,
                      connect_timeout=5, keepalive_interval=0.3, keepalive_count_max=2, reconnect_wait=10,
                      backoff=QUICK_BACKOFF)
    return dataclasses.replace(base, **changes)


def targets(fleet: NetnsFleet) -> list[SshTarget]:
    return [SshTarget(h.name, h.address) for h in fleet.hosts]
