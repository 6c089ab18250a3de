"""The engine's ports: every way it reaches the world, as Protocols.

The engine imports these and nothing concrete; `server/daemon.py` picks one adapter per
port (SQLite store, local runtime, embedded router, HTTP health probe, system clock) and
tests pick in-memory fakes. A second adapter (PostgreSQL, SSH hosts, HAProxy) is one new
module that satisfies a Protocol here, with no change to engine/."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Protocol

from shipyard.analysis.context import QueryContext
from shipyard.analysis.verdict import Verdict
from shipyard.drift.fleet import FleetInputs
from shipyard.drift.report import DriftReport, Mode
from shipyard.errors import RuntimeFailure
from shipyard.fleet.host_status import FAIL, CheckStep, HostCheck, HostReport
from shipyard.rollout.model import Rollout
from shipyard.rollout.records import (
    AuditEntry,
    Event,
    Instance,
    LaunchSpec,
    PendingChange,
    ProbeResult,
    ServiceRecord,
)
from shipyard.router.table import RoutingTable
from shipyard.spec import Spec
from shipyard.spec.fleet import FleetSpec
from shipyard.spec.strategy import PreviewCheck, PrometheusMetric

__all__ = ["AuditTrail", "Clock", "Fleet", "FleetDriftScan", "HealthProbe", "HostReports", "Instance", "LaunchSpec",
           "MetricQuery", "NoFleet", "NoFleetDriftScan", "NoHostReports", "Router", "Runtime", "Store", "SystemClock"]


class AuditTrail(Protocol):
    """Who changed what, when, why: append-only. The API records requests through it; the
    store feeds it the daemon's own events."""

    def record(self, action: str, *, actor: str, service: str | None = None, rollout_id: str | None = None,
               why: str = "", evidence: dict[str, Any] | None = None) -> AuditEntry: ...

    def entries(self, service: str | None = None, limit: int = 100, since: int = 0) -> list[AuditEntry]: ...

    def started_by(self, rollout_id: str) -> str | None: ...

    def begin(self, action: str, *, actor: str, service: str | None, why: str = "",
              evidence: dict[str, Any] | None = None, rollout_id: str | None = None) -> PendingChange: ...

    def finish(self, pending: PendingChange, rollout_id: str | None = None,
               failed: str | None = None) -> AuditEntry | None: ...


class Store(Protocol):
    """What the daemon remembers between restarts. Each method is one consistent change or
    read; the ones that must be atomic together are single methods (`record_step`), and
    mutual exclusion per service is `service_lock`, so no caller needs SQL or a connection."""

    @property
    def audit(self) -> AuditTrail: ...

    def refusals(self) -> dict[str, int]:
        """Calls refused because the store was unavailable (StoreUnavailable), per cause,
        since this object was made: a counter for /metrics."""
        ...

    # services
    def get_service(self, name: str) -> ServiceRecord | None: ...
    def list_services(self) -> list[ServiceRecord]: ...
    def put_service(self, rec: ServiceRecord) -> None: ...
    def delete_service(self, name: str) -> None: ...

    def service_lock(self, service: str) -> AbstractAsyncContextManager[Any]:
        """Held while a service's record and routing table change: one writer per service
        (a shared store takes a lease; one process needs only an in-memory lock)."""
        ...

    # instances
    def put_instance(self, inst: Instance, status: str) -> None: ...
    def set_instance_status(self, instance_id: str, status: str) -> None: ...
    def instances(self, service: str | None = None, slot: str | None = None,
                  live_only: bool = True) -> list[tuple[Instance, str]]: ...
    def instance(self, instance_id: str) -> tuple[Instance, str] | None: ...

    # rollouts
    def next_rollout_seq(self, service: str) -> int: ...
    def put_rollout(self, r: Rollout, spec: dict[str, Any] | None = None) -> None: ...

    def begin_rollout(self, r: Rollout, spec: dict[str, Any] | None = None,
                      service: ServiceRecord | None = None) -> tuple[bool, Rollout]:
        """Start a rollout, atomically: if no rollout of `r.service` is in progress, number `r`
        next (its id becomes SERVICE-SEQ) and store it, and `service` (its record as this
        rollout starts it) if given. Returns (True, the stored rollout), or (False, the
        rollout in progress) with nothing written. Every new rollout goes through here: two
        deploys of one service never both begin, even from two daemons."""
        ...

    def record_step(self, r: Rollout, kind: str, message: str, data: dict[str, Any] | None = None) -> Event:
        """Store the rollout's new state and the event that tells of it atomically: after a
        crash both are there or neither is."""
        ...

    def get_rollout(self, rollout_id: str) -> Rollout | None: ...
    def rollout_spec(self, rollout_id: str) -> dict[str, Any] | None: ...
    def active_rollouts(self, service: str | None = None) -> list[Rollout]: ...
    def rollouts(self, service: str, limit: int = 50) -> list[Rollout]: ...
    def finished_rollout_counts(self) -> list[tuple[str, str, str, str, int]]: ...

    # canary analysis evidence
    def put_analysis(self, rollout_id: str, doc: dict[str, Any]) -> None: ...
    def get_analysis(self, rollout_id: str) -> dict[str, Any] | None: ...
    def finished_analysis_ids(self) -> list[str]: ...

    # events
    def add_event(self, service: str, kind: str, message: str, rollout_id: str | None = None,
                  data: dict[str, Any] | None = None) -> Event: ...
    def events(self, service: str | None = None, rollout_id: str | None = None, since: int = 0,
               limit: int = 500) -> list[Event]: ...
    def last_event(self, service: str, kind: str, rollout_id: str | None = None) -> Event | None: ...

    # the last drift report of each service
    def put_drift_report(self, service: str, report: dict[str, Any]) -> None: ...
    def get_drift_report(self, service: str) -> dict[str, Any] | None: ...
    def remove_drift_report(self, service: str) -> None: ...

    # fleet hosts held out of placement: address -> "draining" | "removed" (None puts it back)
    def put_host_state(self, address: str, state: str | None) -> None: ...
    def host_states(self) -> dict[str, str]: ...


class Runtime(Protocol):
    """Runs instances of images: OS processes today, SSH hosts or containers next."""

    async def start(self, launch: LaunchSpec) -> Instance:
        """Start the process and return at once (readiness is the health checker's job)."""
        ...

    async def stop(self, instance: Instance, timeout: float) -> None:
        """SIGTERM the process group, SIGKILL after `timeout`; returns when it is gone."""
        ...

    def is_alive(self, instance: Instance) -> bool:
        """True while the very same process (pid and start time) is running."""
        ...

    def exit_code(self, instance: Instance) -> int | None:
        """How it ended, when known (None while running or when not ours to know)."""
        ...


class Fleet(Protocol):
    """The hosts a fleet spec runs on: the runtime learns to reach them before the engine
    starts an instance there, and tells how long a host has been silent, so the engine
    (not the transport) decides when it is lost."""

    async def use(self, service: str, fleet: FleetSpec, base_dir: Path) -> None:
        """Make the runtime able to start, watch and stop instances on every host of `fleet`
        (its ssh section's paths are relative to `base_dir`). Idempotent and cheap when
        nothing changed: the supervisor asks every tick. A ShipyardError when it cannot."""
        ...

    def unreachable_since(self, address: str) -> float | None:
        """Clock.monotonic() since which the host at `address` has not answered (None: it
        answers, or it is not known yet)."""
        ...

    async def stop_unrecorded(self, address: str, recorded: Callable[[str], bool], timeout: float) -> list[str]:
        """Stop the instances running on the host at `address` whose id `recorded` does not
        know (a controller killed between a start and its record); returns their ids."""
        ...


class NoFleet:
    """The default of `Deps.fleet`: a single-machine engine. A fleet spec is refused with a
    reason instead of silently running on this machine."""

    async def use(self, service: str, fleet: FleetSpec, base_dir: Path) -> None:
        raise RuntimeFailure(f"cannot run {service} on its fleet: this engine has no runtime for hosts over SSH",
                             hint="run the daemon with `shipyard serve` (it wires the SSH runtime), or remove "
                             "the fleet section to run on this machine")

    def unreachable_since(self, address: str) -> float | None:
        return None

    async def stop_unrecorded(self, address: str, recorded: Callable[[str], bool], timeout: float) -> list[str]:
        return []


class Router(Protocol):
    """What the engine needs from a router, whatever data plane is behind it."""

    async def ensure(self, service: str, listen: str, kind: str | None = None, *,
                     redirect_http: str | None = None, domains: Sequence[str] = (),
                     workers: int | None = None) -> dict[str, Any] | None:
        """Make sure a data plane serves `service` on `listen` (start or re-adopt it), and, with
        `redirect_http`, a plain-HTTP listener there answering 308 to https (tls.redirect_http).

        `domains` (the spec's, lowercased: exact names and leading `*.` wildcards): the Host
        names routed to `service` on `listen`, which other services with their own domains may
        share; () (default): every Host on `listen` goes to `service`, which has it alone. The
        engine checks who may share an address (engine/listen_sharing.py) before it asks.

        `kind` is the spec's `router.kind` ("embedded", "haproxy"), given when a release is
        deployed; None: the kind that serves the service now (a repair, a daemon restart). A
        router that is one kind only refuses another with a RouterError.

        `workers` is the spec's `router.workers` (embedded router processes on `listen`), given
        when a release is deployed; None: as many as serve it now.

        Returns None, or, when it had to replace a data plane that had died or stopped
        answering, what became of it: {"pid", "exit_code", "signal", "reason"} (exit_code
        and signal None when unknown), so the engine can record the crash."""
        ...

    def exited(self, service: str) -> bool:
        """True once the data plane last found serving `service` has died. Cheap (no network): asked
        every supervisor tick, so a crashed router is replaced (by `ensure`) within a tick."""
        ...

    async def apply(self, table: RoutingTable) -> None:
        """Swap the whole table atomically; returns once the data plane serves it."""
        ...

    async def current(self, service: str) -> RoutingTable | None:
        ...

    def pids(self, service: str) -> set[int]:
        """The data plane's processes for `service` (their listeners are shipyard's)."""
        ...

    async def stats(self, service: str) -> dict[str, Any]:
        """Per-track request counts, status classes and latency histogram."""
        ...

    async def series(self, service: str, since: float) -> dict[str, Any]:
        """Per-track, per-second metrics: what the canary analysis judges.

        Returns {"now": unix time (float), "series": {track: [point, ...]}} where a point is
        {"t": unix second, "requests": n, "errors": n, "latency": {"<bucket>": count}}:
        responses completed during that wall-clock second; errors are those with status
        >= 500 (the instance's 5xx, and the router's 502/503/504 for failed connects and
        timeouts); latency is a sparse histogram in `shipyard.histogram` buckets (request
        head received -> response sent). Only completed seconds with since < t < now are
        returned, ascending, from the last 600 s; a second with no traffic on a track is
        omitted, and must be read as zero requests. Poll again with
        since = int(now) - 1 to get each second exactly once. Track metrics survive table
        swaps, so a series is continuous across them; a router restart starts it afresh."""
        ...

    async def stop(self, service: str) -> None:
        ...


class MetricQuery(Protocol):
    """What the canary judge needs from a metric provider: one prometheus metric of the
    analysis queried now and judged. A port like the runtime and the router, so the
    judge can be exercised without a Prometheus server."""

    async def __call__(self, name: str, metric: PrometheusMetric, context: QueryContext,
                       env: Mapping[str, str], /) -> Verdict:
        """Anything but one clear number within the metric's bounds must not be `successful`."""
        ...


class HealthProbe(Protocol):
    """Is an instance ready for traffic? The daemon wires HTTP probes (runtime/health.py);
    a fake answers from a script, so a rollout runs without sockets."""

    async def wait_healthy(self, inst: Instance, *, path: str, interval: float, timeout: float,
                           healthy_threshold: int, deadline_s: float, is_alive: Callable[[Instance], bool],
                           exit_code: Callable[[Instance], int | None] | None = None) -> tuple[bool, str]:
        """(True, "") after `healthy_threshold` successes in a row; (False, why) when
        `deadline_s` passes or the process exits first."""
        ...

    async def check(self, inst: Instance, path: str, timeout: float) -> ProbeResult:
        """One probe now: did the instance answer its health path with 2xx/3xx? Never raises."""
        ...

    async def run_checks(self, base_url: str, checks: Sequence[PreviewCheck], *, label: str,
                         extra_headers: Mapping[str, str] | None = None,
                         log: Callable[[str], None] | None = None,
                         trust: ssl.SSLContext | None = None) -> str | None:
        """Send each check's request to `base_url`: None when all answer as expected, else
        the first failure in words (preview checks through the router, the database gate).
        `trust` verifies an https `base_url` (the router's own certificate, pinned)."""
        ...


class Clock(Protocol):
    """All rollout timing goes through this, so a fake clock runs a 10-minute canary in
    milliseconds and a test can say exactly when a warm slot retires."""

    def now(self) -> float:
        """Unix wall time in seconds (persisted deadlines, the router's per-second series)."""
        ...

    def monotonic(self) -> float:
        """For intervals that must not jump with the wall clock."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock: time.time, time.monotonic, asyncio.sleep."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class NoHealthProbe:
    """The default of `Deps.health`: nothing concrete is wired, so every check fails with
    a reason instead of the engine importing a socket-level prober itself."""

    async def wait_healthy(self, inst: Instance, *, path: str, interval: float, timeout: float,
                           healthy_threshold: int, deadline_s: float, is_alive: Callable[[Instance], bool],
                           exit_code: Callable[[Instance], int | None] | None = None) -> tuple[bool, str]:
        return False, "no health probe is wired into this engine"

    async def check(self, inst: Instance, path: str, timeout: float) -> ProbeResult:
        return ProbeResult(ok=False, status=None, error="no health probe is wired", seconds=0.0)

    async def run_checks(self, base_url: str, checks: Sequence[PreviewCheck], *, label: str,
                         extra_headers: Mapping[str, str] | None = None,
                         log: Callable[[str], None] | None = None) -> str | None:
        return f"cannot check {label}: no health probe is wired" if checks else None


class FleetDriftScan(Protocol):
    """Drift of one service across fleet hosts: every host's trees, instance processes,
    listeners on the service ports and managed files, each host asked in one round trip;
    every finding names its host (and path). A host that cannot be asked is an ``unknown``
    finding, never a clean host. The SSH adapter: runtime/ssh/drift_scan.py."""

    async def scan(self, inputs: FleetInputs, mode: Mode = "metadata") -> DriftReport: ...

    async def quarantine(self, address: str, image_id: str) -> str | None:
        """Move the tampered tree of ``image_id`` on host ``address`` aside, so the successor the
        heal starts there gets a fresh one (RuntimeFailure when the host cannot be reached)."""
        ...


class NoFleetDriftScan:
    """The default of `Deps.fleet_drift`: nothing reaches the hosts, so a fleet service's scan
    fails with a reason instead of reporting hosts it never asked as clean."""

    async def scan(self, inputs: FleetInputs, mode: Mode = "metadata") -> DriftReport:
        raise RuntimeFailure(f"cannot scan {inputs.service.name} for drift on its hosts: this engine has no fleet "
                             "drift scanner", hint="run the daemon with `shipyard serve` (it wires the SSH scanner)")

    async def quarantine(self, address: str, image_id: str) -> str | None:
        raise RuntimeFailure(f"cannot quarantine image {image_id[:12]} on {address}: this engine has no fleet "
                             "drift scanner", hint="run the daemon with `shipyard serve` (it wires the SSH scanner)")


class HostReports(Protocol):
    """What `shipyard hosts` asks of a fleet's hosts: how each is now, and whether each could
    run a service. Every host is asked at once (bounded); one that fails is reported with
    the reason and never fails the others. Never raises for a host's fault."""

    async def report(self, fleet: FleetSpec, base_dir: Path) -> list[HostReport]:
        """Every inventory host: reachable (and its helper's facts) or the reason it is not.
        `base_dir` anchors the ssh section's relative paths (the spec file's directory)."""
        ...

    async def check(self, spec: Spec, image_id: str | None, own_pids: Mapping[str, set[int]]) -> list[HostCheck]:
        """Can each host of `spec.fleet` run the service: SSH and host key, python3, helper
        install, disk for `image_id`, the listen port free (`own_pids`: per host address, the
        pids of the service's own instances, whose listeners do not count), and `image_id`
        shipped and verified there (None: no image yet, that step is skipped)."""
        ...


class NoHostReports:
    """The default of `Deps.host_reports`: nothing concrete is wired, so asking says so
    instead of the engine reaching for SSH itself."""

    async def report(self, fleet: FleetSpec, base_dir: Path) -> list[HostReport]:
        return [HostReport(h.name, h.address, False, "no host reporter is wired into this engine")
                for h in fleet.hosts or []]

    async def check(self, spec: Spec, image_id: str | None, own_pids: Mapping[str, set[int]]) -> list[HostCheck]:
        fleet = spec.fleet
        return [HostCheck(h.name, h.address, [CheckStep("ssh", FAIL, "no host reporter is wired into this engine")])
                for h in (fleet.hosts or [] if fleet else [])]
