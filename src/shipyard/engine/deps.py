"""What the engine is built from: one adapter per port, chosen by `server/daemon.py` (or a
test). Keyword-constructible, with defaults that do no I/O, so a test names only the ports
it cares about."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shipyard.analysis.context import QueryContext
from shipyard.analysis.verdict import Verdict
from shipyard.engine.ports import (
    Clock,
    Fleet,
    FleetDriftScan,
    HealthProbe,
    HostReports,
    MetricQuery,
    NoFleet,
    NoFleetDriftScan,
    NoHealthProbe,
    NoHostReports,
    Router,
    Runtime,
    Store,
    SystemClock,
)
from shipyard.rollout.records import Event
from shipyard.spec.strategy import PrometheusMetric

if TYPE_CHECKING:
    from shipyard.images import ImageStore
    from shipyard.paths import StatePaths


async def no_metric_provider(name: str, metric: PrometheusMetric, context: QueryContext,
                             env: Mapping[str, str], /) -> Verdict:
    """Without a provider a query cannot pass: inconclusive, with the reason."""
    return Verdict(metric=name, kind="prometheus", status="inconclusive", value=None, threshold=None, samples=0,
                   detail="no metric provider is wired into this controller")


@dataclass
class Deps:
    store: Store
    images: ImageStore
    runtime: Runtime
    router: Router
    paths: StatePaths
    health: HealthProbe = field(default_factory=NoHealthProbe)
    """Readiness and HTTP checks of instances (the daemon wires runtime.health.HttpHealthProbe)."""
    fleet: Fleet = field(default_factory=NoFleet)
    """The hosts of fleet specs (the daemon wires runtime.ssh.fleet.SshFleet); the default refuses them."""
    fleet_drift: FleetDriftScan = field(default_factory=NoFleetDriftScan)
    """Drift scans of fleet services on their hosts (the daemon wires runtime.ssh.drift_scan.SshDriftScan)."""
    clock: Clock = field(default_factory=SystemClock)
    """Every rollout timer and deadline; a fake clock makes a long canary instant in tests."""
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    on_event: Callable[[Event], None] = lambda event: None
    """Told of every event once it is stored (notifications); must not block or raise."""
    query_metric: MetricQuery = no_metric_provider
    """Runs the prometheus metrics of a canary analysis (the daemon wires analysis.providers.prometheus.judge)."""
    router_restarts: dict[str, int] = field(default_factory=dict)
    """Per service, how often its router was found dead and restarted since this daemon
    started (/metrics exports it as a counter; a daemon restart resets it, as Prometheus expects)."""
    host_reports: HostReports = field(default_factory=NoHostReports)
    """Asks fleet hosts how they are and whether they can run a service (`shipyard hosts`;
    the daemon wires runtime.ssh.host_report.SshHostReports)."""
    preview_secret: str = field(default_factory=lambda: secrets.token_hex(32))
    """What preview tokens are derived from (the daemon passes its API token, so they survive a
    restart); random by default, so an unwired Deps never yields a guessable token."""
