"""In-memory implementations of the engine's ports, good enough to drive whole rollouts:
no processes, no sockets, no waiting (time is virtual: see virtual_time.py).

- InMemoryStore (memory_store.py): the Store, with SqliteStore's semantics.
- FakeImages: an image store of named, never-built images.
- FakeRuntime: instances are records; an image can be told to crash at start, never
  become healthy, or answer some path with some status.
- FakeRouter: keeps every applied table per service; `series()` synthesises per-second
  points per track from a per-track (or per-release) error rate and latency, on the
  fake clock, in the format engine/ports.Router documents.
- FakeHealthProbe: healthy after `healthy_threshold` intervals unless the runtime says
  the image is broken; the supervisor's one-shot `check`; and `run_checks` (preview
  checks), real HTTP requests over httpx's MockTransport (no socket) routed by the fake
  router's current table to a fake instance.
- FakeFleet: the Fleet port: records which hosts each service was set up on; a test says
  since when a host is silent (`silence`), on the fake clock.
- FakeHostReports: the HostReports port from a table of host states (up, down with a
  reason, a failing check step), recording every fleet and spec it was asked about.
- FakeClock (virtual_time.py): the Clock, on a loop whose time is virtual."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shipyard.errors import RouterError, RuntimeFailure
from shipyard.fleet.host_status import CHECK_STEPS, FAIL, OK, CheckStep, HostCheck, HostReport
from shipyard.histogram import bucket_of
from shipyard.httpcheck import run_checks
from shipyard.images import BuildInput, Image
from shipyard.rollout.records import Instance, LaunchSpec, ProbeResult
from shipyard.router.table import PREVIEW_TOKEN_HEADER, TRACK_HEADER, RoutingTable
from shipyard.runtime.ssh.hostkeys import TrustedKey
from shipyard.spec import Spec
from shipyard.spec.fleet import FleetSpec, HostSpec
from shipyard.spec.strategy import PreviewCheck
from support.memory_store import InMemoryStore
from support.virtual_time import FakeClock, VirtualTimeLoop, run

__all__ = ["FakeClock", "FakeFleet", "FakeHealthProbe", "FakeHostReports", "FakeImages", "FakeRouter", "FakeRuntime",
           "InMemoryStore", "VirtualTimeLoop", "run"]


class FakeImages:
    """Images by id, made up on demand: a test names them ("v1", "v2") and deploys them."""

    def __init__(self, root: Path = Path("/nonexistent/fake-images")) -> None:
        self.root = root
        self.images: dict[str, Image] = {}
        self.built: list[BuildInput] = []
        self.next_build: str | None = None
        """The id the next build() returns (else one derived from the build input)."""

    def add(self, image_id: str, service: str = "shop", command: list[str] | None = None,
            env: dict[str, str] | None = None) -> Image:
        image = Image(image_id, service, 0.0, command or ["app", "--port", "${PORT}"], dict(env or {}), 1, 1,
                      manifest={"files": []})
        self.images[image_id] = image
        return image

    async def build(self, inp: BuildInput, log: Callable[[str], None] | None = None,
                    use_cache: bool = True) -> Image:
        self.built.append(inp)
        image_id = self.next_build or hashlib.sha256(repr(inp).encode()).hexdigest()
        self.next_build = None
        if log:
            log(f"fake build of {inp.service} -> {image_id}")
        return self.images.get(image_id) or self.add(image_id, inp.service, list(inp.run_command), inp.run_env)

    def get(self, ref: str) -> Image:
        if ref not in self.images:
            self.add(ref)
        return self.images[ref]

    def list(self, service: str | None = None) -> list[Image]:
        return [i for i in self.images.values() if service is None or i.service == service]

    def tree_path(self, image_id: str) -> Path:
        return self.root / image_id

    def verified_tree(self, image_id: str) -> Path:
        self.get(image_id)
        return self.tree_path(image_id)


@dataclass
class Behaviour:
    """How instances of one image behave."""

    exit_at_start: int | None = None       # exits with this code as soon as it is started
    healthy: bool = True                   # False: runs, but its health checks never pass
    answers: dict[str, tuple[int, str]] = field(default_factory=dict)   # path -> (status, body)


@dataclass
class _Proc:
    inst: Instance
    launch: LaunchSpec
    alive: bool = True
    exit_code: int | None = None


class FakeRuntime:
    def __init__(self) -> None:
        self.behaviour: dict[str, Behaviour] = {}
        self.procs: dict[str, _Proc] = {}
        self.started: list[Instance] = []
        self.stopped: list[str] = []
        self.refuse_start: str | None = None
        """When set, start() raises RuntimeFailure with this message."""
        self._pids = itertools.count(40_000)
        self._ports = itertools.count(20_000)

    # -- telling it how images behave ------------------------------------------------

    def of(self, image_id: str) -> Behaviour:
        return self.behaviour.setdefault(image_id, Behaviour())

    def crashes(self, image_id: str, exit_code: int = 1) -> None:
        self.of(image_id).exit_at_start = exit_code

    def never_healthy(self, image_id: str) -> None:
        self.of(image_id).healthy = False

    def answers(self, image_id: str, path: str, status: int, body: str = "") -> None:
        self.of(image_id).answers[path] = (status, body)

    # -- the Runtime port ----------------------------------------------------------------

    async def start(self, launch: LaunchSpec) -> Instance:
        if self.refuse_start is not None:
            raise RuntimeFailure(self.refuse_start)
        pid = next(self._pids)
        inst = Instance(launch.instance_id, launch.service, launch.slot, launch.image_id, launch.host,
                        next(self._ports), pid, pid * 10, str(launch.instance_dir / "log"),
                        str(launch.instance_dir / "data"))
        proc = _Proc(inst, launch)
        code = self.of(launch.image_id).exit_at_start
        if code is not None:
            proc.alive, proc.exit_code = False, code
        self.procs[inst.id] = proc
        self.started.append(inst)
        return inst

    async def stop(self, instance: Instance, timeout: float) -> None:
        proc = self.procs.get(instance.id)
        if proc is not None and proc.alive:
            proc.alive, proc.exit_code = False, -15
        self.stopped.append(instance.id)

    def is_alive(self, instance: Instance) -> bool:
        proc = self.procs.get(instance.id)
        return (proc is not None and proc.alive and proc.inst.pid == instance.pid
                and proc.inst.start_time == instance.start_time)

    def exit_code(self, instance: Instance) -> int | None:
        proc = self.procs.get(instance.id)
        return proc.exit_code if proc is not None else None

    # -- for tests -------------------------------------------------------------------------

    def kill(self, instance_id: str, code: int = -9) -> None:
        proc = self.procs[instance_id]
        proc.alive, proc.exit_code = False, code

    def live(self, service: str | None = None, slot: str | None = None) -> list[Instance]:
        return [p.inst for p in self.procs.values()
                if p.alive and (service is None or p.inst.service == service) and (slot is None or p.inst.slot == slot)]

    def at(self, host: str, port: int) -> _Proc | None:
        return next((p for p in self.procs.values() if (p.inst.host, p.inst.port) == (host, port)), None)

    def healthy(self, inst: Instance) -> bool:
        return self.is_alive(inst) and self.of(inst.image_id).healthy

    def respond(self, host: str, port: int, path: str) -> tuple[int, str]:
        """What the instance listening there answers (503 when none is alive there)."""
        proc = self.at(host, port)
        if proc is None or not proc.alive:
            return 503, "no instance"
        b = self.of(proc.inst.image_id)
        return b.answers.get(path, (200, f"ok from {proc.inst.image_id}"))


class FakeFleet:
    """The Fleet port in memory: `use` remembers each service's host addresses; `silence`
    makes a host unreachable since a (monotonic) moment, `answer` makes it answer again."""

    def __init__(self) -> None:
        self.hosts: dict[str, list[str]] = {}
        self.uses = 0
        self.silent: dict[str, float] = {}
        self.running: dict[str, list[str]] = {}

    async def use(self, service: str, fleet: FleetSpec, base_dir: Path) -> None:
        self.uses += 1
        self.hosts[service] = [h.address for h in fleet.hosts or []]

    def unreachable_since(self, address: str) -> float | None:
        return self.silent.get(address)

    async def stop_unrecorded(self, address: str, recorded: Callable[[str], bool], timeout: float) -> list[str]:
        """`running[address]`: instance ids a test put there; the unrecorded ones are stopped."""
        stray = [i for i in self.running.get(address, []) if not recorded(i)]
        self.running[address] = [i for i in self.running.get(address, []) if i not in stray]
        return stray

    def silence(self, address: str, since: float) -> None:
        self.silent[address] = since

    def answer(self, address: str) -> None:
        self.silent.pop(address, None)


@dataclass
class Traffic:
    """Synthetic load on one track: requests per second, error rate, latency."""

    rps: int = 200
    error_rate: float = 0.0
    latency_ms: float = 5.0


class FakeRouter:
    def __init__(self, clock: FakeClock, rps: int = 200) -> None:
        self.clock = clock
        self.rps = rps
        self.listen: dict[str, str] = {}
        self.redirects: dict[str, str | None] = {}
        """service -> the redirect_http address of its last `ensure`."""
        self.tables: dict[str, RoutingTable] = {}
        self.applied: dict[str, list[tuple[float, RoutingTable]]] = {}
        """service -> every table taken, with the unix time it was taken at, in order."""
        self.track_traffic: dict[str, Traffic] = {}
        self.release_traffic: dict[str, Traffic] = {}
        """Keyed by image id: wins over the track's, so "the bad release errors" follows it."""
        self.refuse_apply: str | None = None
        self.started_at = clock.now()
        self.crashes: dict[str, dict[str, Any]] = {}
        """service -> how its data plane died: the next ensure restarts it and says so (once)."""
        self.ensured: list[str] = []
        """The service of every `ensure` call, in order."""
        self.kinds: dict[str, str] = {}
        """service -> the router kind the last deploy asked for (ensure's `kind`)."""
        self.domains: dict[str, tuple[str, ...]] = {}
        """service -> the domains of its last `ensure` (() : every Host on its listen)."""

    # -- telling it about traffic ------------------------------------------------------------

    def traffic(self, track: str | None = None, release: str | None = None, **kw: Any) -> None:
        into = self.release_traffic if release is not None else self.track_traffic
        key = release if release is not None else track
        assert key is not None, "name a track or a release"
        into[key] = Traffic(**({"rps": self.rps} | kw))

    def weights(self, service: str) -> list[dict[str, float]]:
        """The unpinned weights of every table applied, in order, repeats collapsed."""
        out: list[dict[str, float]] = []
        for _t, table in self.applied.get(service, []):
            if not out or out[-1] != table.weights:
                out.append(dict(table.weights))
        return out

    # -- the Router port -----------------------------------------------------------------

    def exited(self, service: str) -> bool:
        return service in self.crashes

    async def ensure(self, service: str, listen: str, kind: str | None = None, *,
                     redirect_http: str | None = None, domains: Sequence[str] = (),
                     workers: int | None = None) -> dict[str, Any] | None:
        await asyncio.sleep(0)     # a real router start awaits: other tasks run meanwhile (issue 13's race)
        self.ensured.append(service)
        self.domains[service] = tuple(domains)
        if kind is not None:
            self.kinds[service] = kind
        self.listen[service] = listen
        self.redirects[service] = redirect_http
        lost = self.crashes.pop(service, None)
        if lost is not None:
            self.tables.pop(service, None)   # a restarted data plane comes back without a table here
        return lost

    async def apply(self, table: RoutingTable) -> None:
        if self.refuse_apply is not None:
            raise RouterError(self.refuse_apply)
        served = self.tables.get(table.service)
        if served is not None and table.version < served.version:
            raise RouterError(f"stale table: version {table.version} is older than the served version "
                              f"{served.version}")
        self.tables[table.service] = table
        self.applied.setdefault(table.service, []).append((self.clock.now(), table))

    async def current(self, service: str) -> RoutingTable | None:
        return self.tables.get(service)

    def pids(self, service: str) -> set[int]:
        return set()

    async def stats(self, service: str) -> dict[str, Any]:
        """Request and error totals per track over everything served since the router started."""
        tracks: dict[str, dict[str, int]] = {}
        for points in self._series(service, self.started_at, self.clock.now()).values():
            for p in points:
                t = tracks.setdefault(p["track"], {"requests": 0, "errors": 0})
                t["requests"] += p["requests"]
                t["errors"] += p["errors"]
        return {"service": service, "tracks": tracks}

    async def series(self, service: str, since: float) -> dict[str, Any]:
        now = self.clock.now()
        points = self._series(service, max(since, now - 600), now)
        return {"now": now, "series": {track: [{k: v for k, v in p.items() if k != "track"} for p in ps]
                                       for track, ps in points.items()}}

    async def stop(self, service: str) -> None:
        self.tables.pop(service, None)
        self.listen.pop(service, None)

    # -- synthesis -------------------------------------------------------------------------

    def _table_at(self, service: str, t: float) -> RoutingTable | None:
        table = None
        for at, tb in self.applied.get(service, []):
            if at > t:
                break
            table = tb
        return table

    def _series(self, service: str, since: float, now: float) -> dict[str, list[dict[str, Any]]]:
        """Completed seconds since < t < now; each split among tracks by the table served at its start."""
        out: dict[str, list[dict[str, Any]]] = {}
        for t in range(int(since) + 1, int(now)):
            if t + 1 > now:
                break
            table = self._table_at(service, t)
            if table is None:
                continue
            for track, weight in table.weights.items():
                traffic = self.release_traffic.get(table.releases.get(track, "")) or self.track_traffic.get(
                    track) or Traffic(self.rps)
                n = round(traffic.rps * weight / 100)
                if n <= 0:
                    continue
                errors = round(n * traffic.error_rate)
                out.setdefault(track, []).append({"track": track, "t": t, "requests": n, "errors": errors,
                                                  "latency": {str(bucket_of(traffic.latency_ms)): n}})
        return out


class FakeHealthProbe:
    """The HealthProbe port from the fakes' records: no socket, only the (virtual) waiting.

    `run_checks` sends real HTTP requests through httpx's MockTransport: to the fake
    router's listen address they are routed by `X-Shipyard-Track` through its current
    table (the preview route), to an instance's address straight to it (the database
    gate); the instance answers as FakeRuntime was told. The check logic is the real one
    (httpcheck.run_checks)."""

    def __init__(self, runtime: FakeRuntime, clock: FakeClock, router: FakeRouter | None = None) -> None:
        self.runtime = runtime
        self.clock = clock
        self.router = router
        self.requests: list[tuple[str, str]] = []      # (track header, path) of every check request sent
        self.trusts: list[ssl.SSLContext | None] = []   # the `trust` of every run_checks call

    async def wait_healthy(self, inst: Instance, *, path: str, interval: float, timeout: float,
                           healthy_threshold: int, deadline_s: float, is_alive: Callable[[Instance], bool],
                           exit_code: Callable[[Instance], int | None] | None = None) -> tuple[bool, str]:
        """Answers as runtime/health.wait_healthy does: (True, "") once healthy, else (False, why)."""
        waited = 0.0
        while True:
            if not is_alive(inst):
                code = exit_code(inst) if exit_code else None
                how = "process exited" if code is None else f"process exited (code {code})"
                return False, f"{how} before becoming healthy; last log lines:\n  (log is empty)"
            if self.runtime.healthy(inst) and waited >= interval * (healthy_threshold - 1):
                return True, ""
            if waited >= deadline_s:
                return False, f"not healthy after {deadline_s:g}s: last probe: GET {path} -> 503"
            step = min(interval, deadline_s - waited)
            await self.clock.sleep(step)
            waited += step

    async def check(self, inst: Instance, path: str, timeout: float) -> ProbeResult:
        if not self.runtime.is_alive(inst):
            return ProbeResult(ok=False, status=None, error="connection refused", seconds=0.0)
        ok = self.runtime.healthy(inst)
        return ProbeResult(ok=ok, status=200 if ok else 503, error=None, seconds=0.001)

    async def run_checks(self, base_url: str, checks: Sequence[PreviewCheck], *, label: str,
                         extra_headers: Mapping[str, str] | None = None,
                         log: Callable[[str], None] | None = None,
                         trust: ssl.SSLContext | None = None) -> str | None:
        self.trusts.append(trust)
        transport = httpx.MockTransport(self._answer)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            return await run_checks(client, checks, label=label, extra_headers=extra_headers, log=log)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        host, port = request.url.host, request.url.port or 80
        override = request.headers.get(TRACK_HEADER)
        self.requests.append((override or "", request.url.path))
        service = next((svc for svc, listen in (self.router.listen if self.router else {}).items()
                        if listen.rsplit(":", 1) == [host, str(port)]), None)
        if service is None:                                      # straight to an instance
            status, body = self.runtime.respond(host, port, request.url.path)
            return httpx.Response(status, text=body)
        table = self.router.tables.get(service) if self.router else None
        if table is not None and (table.preview_token is None
                                  or request.headers.get(PREVIEW_TOKEN_HEADER) != table.preview_token):
            override = None              # as the data plane: a forced track needs the service's token
        track = table.track_for(override=override) if table is not None else None
        upstreams = table.tracks.get(track, ()) if table is not None and track else ()
        if not upstreams:
            return httpx.Response(503, text="no upstream for this track")
        status, body = self.runtime.respond(upstreams[0].host, upstreams[0].port, request.url.path)
        return httpx.Response(status, text=body)


FAKE_FACTS = {"helper_version": "0.0-fake", "bundle_sha256": "f" * 64, "python": "3.11.2", "root": "/root/.shipyard",
              "host": {"hostname": "fake", "boot_id": "boot-1", "cpu_count": 2, "load": [0.25, 0.5, 0.75],
                       "disk": {"path": "/root/.shipyard", "total": 10 << 30, "free": 4 << 30},
                       "memory": {"total": 2 << 30, "available": 1 << 30}}}


class FakeHostReports:
    """HostReports from a table: a host named in `down` is unreachable with that reason, one in
    `failing` fails that check step ((step, reason)); every other host is up with FAKE_FACTS."""

    def __init__(self) -> None:
        self.down: dict[str, str] = {}
        self.failing: dict[str, tuple[str, str]] = {}
        self.trusted: dict[str, TrustedKey] = {}
        """Per host name: a key this fake "trusts on first contact" on every call, told to `on_trust`
        (the daemon's KeyTrustAudit) as SshHostReports tells it."""
        self.on_trust: Callable[[TrustedKey], None] | None = None
        self.reported: list[tuple[list[str], Path]] = []
        """(host names, base_dir) of every report call."""
        self.checked: list[tuple[str, str | None, dict[str, set[int]]]] = []
        """(service, image id, own pids) of every check call."""

    async def report(self, fleet: FleetSpec, base_dir: Path) -> list[HostReport]:
        hosts = fleet.hosts or []
        self.reported.append(([h.name for h in hosts], base_dir))
        self._trust(hosts)
        return [HostReport(h.name, h.address, False, self.down[h.name], "start its sshd", seconds=0.01)
                if h.name in self.down else HostReport(h.name, h.address, True, facts=FAKE_FACTS, seconds=0.01)
                for h in hosts]

    async def check(self, spec: Spec, image_id: str | None, own_pids: Mapping[str, set[int]]) -> list[HostCheck]:
        self.checked.append((spec.service, image_id, dict(own_pids)))
        assert spec.fleet is not None
        self._trust(spec.fleet.hosts or [])
        out = []
        for h in spec.fleet.hosts or []:
            steps = []
            for name in CHECK_STEPS:
                if h.name in self.down:
                    steps.append(CheckStep(name, FAIL, self.down[h.name], "start its sshd"))
                    break
                step, why = self.failing.get(h.name, ("", ""))
                steps.append(CheckStep(name, FAIL, why, "fix it") if name == step else CheckStep(name, OK, "fine"))
            out.append(HostCheck(h.name, h.address, steps, 0.01))
        return out

    def _trust(self, hosts: Sequence[HostSpec]) -> None:
        for h in hosts:
            if h.name in self.trusted and self.on_trust is not None:
                self.on_trust(self.trusted[h.name])
