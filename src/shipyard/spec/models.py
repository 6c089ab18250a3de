"""The models of shipyard.yaml: one class per section, key names exactly as users write them.

They are frozen values: the controller compares and stores what it was given,
so nothing may change a spec after it was validated. Scalars are strict (a quoted "2"
is not a replica count, `yes` is not a service name) because a spec that means
something other than what it says is worse than one that fails to load."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    PrivateAttr,
    Strict,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .domains import Domains
from .durations import Duration, PositiveDuration
from .fleet import FleetSpec
from .strategy import BlueGreenSpec, PreviewCheck, StrategySpec
from .values import (
    Argv,
    Bool,
    EnvMap,
    EnvName,
    HeaderName,
    HttpPath,
    Listen,
    RelativePath,
    ServiceName,
    SpecModel,
    Text,
    exactly_one,
    http_url,
    regex_check,
    split_listen,
)

# -- build, run, health ---------------------------------------------------------------------------

class BuildSpec(SpecModel):
    """How the immutable image is made; any change here makes a new image."""

    context: Text = "."
    ignore: list[Text] = Field(default_factory=lambda: [".git", "__pycache__", "*.pyc"])
    steps: list[Argv] = Field(default_factory=list)
    env: EnvMap = Field(default_factory=dict)
    files: dict[RelativePath, str] = Field(default_factory=dict)


class RunSpec(SpecModel):
    """How an instance is started and stopped from its image."""

    command: Argv
    env: EnvMap = Field(default_factory=dict)
    secret_env: list[EnvName] = Field(default_factory=list)
    stop_timeout: PositiveDuration = 10.0

    @field_validator("secret_env")
    @classmethod
    def _secrets_apart(cls, value: list[str], info: ValidationInfo) -> list[str]:
        seen: set[str] = set()
        for name in value:
            if name in seen:
                raise ValueError(f"{name} is listed twice")
            seen.add(name)
            if name in info.data.get("env", {}):
                raise ValueError(f"{name} is also set in run.env; a secret comes only from the daemon's environment")
        return value


class HealthSpec(SpecModel):
    """When an instance counts as healthy (before it gets traffic) and unhealthy (after)."""

    path: HttpPath = "/healthz"
    interval: PositiveDuration = 1.0
    timeout: PositiveDuration = 2.0
    healthy_threshold: Annotated[int, Strict(), Field(ge=1)] = 2
    unhealthy_threshold: Annotated[int, Strict(), Field(ge=1)] = 3
    start_timeout: PositiveDuration = 60.0
    """How long a new instance may take to become healthy before its release is refused."""


# -- database, router -----------------------------------------------------------------------------

class DatabaseCheckSpec(SpecModel):
    """`shipyard db check`: rehearse the pending migrations on a scratch copy of the database."""

    enabled: Bool = True
    """false: deploy skips the rehearsal (lint still runs)."""
    sample_rows: Annotated[int, Strict(), Field(ge=0, le=10_000_000)] = 1000
    """Rows per table of the rehearsal's copy (0: schema only). A touched table up to
    max(sample_rows, 100,000) rows (256 MiB in all) is copied whole and its stalls measured;
    a bigger one is rehearsed on two samples and its stalls extrapolated to its live size."""
    max_stall: PositiveDuration | None = None
    """Longest an application query may wait on a migration lock; default: database.lock_timeout."""
    requests: list[PreviewCheck] | None = None
    """Sent to the live and the new release, both on the migrated copy; default: the preview
    checks (blue-green), else a GET of the health path."""


class DatabaseSpec(SpecModel):
    """The Database test: where migrations come from and how long a DDL may wait for a lock."""

    url: Annotated[str, regex_check(r"postgres(ql)?://\S+", "PostgreSQL URL (postgresql://host:port/db)")]
    migrations: Text | None = None
    """Directory of NNNN_name.sql files and NNNN_name.backfill.yaml declared backfills, relative to the spec file."""
    alembic: Text | None = None
    """Path of alembic.ini, relative to the spec file."""
    target: Text | None = None
    """Apply migrations up to this version (NNNN, or an Alembic revision); default: all of them."""
    lock_timeout: PositiveDuration = 1.0
    retries: Annotated[int, Strict(), Field(ge=0, le=20)] = 3
    """How often a migration that hit lock_timeout is tried again (with backoff) before the deploy stops."""
    url_env: EnvName = "DATABASE_URL"
    """The variable through which instances receive database.url."""
    check: DatabaseCheckSpec = Field(default_factory=DatabaseCheckSpec)

    @model_validator(mode="after")
    def _one_source(self) -> DatabaseSpec:
        exactly_one(self, ("migrations", "alembic"))
        return self

    @property
    def kind(self) -> Literal["migrations", "alembic"]:
        return "migrations" if self.migrations is not None else "alembic"


class DriftSpec(SpecModel):
    """The Drift test: how often the daemon compares what runs with what was deployed."""

    interval: PositiveDuration = 60.0
    """Metadata pass (size, mtime, inode of every image file; processes; listeners) this often."""
    full_interval: PositiveDuration = 3600.0
    """Full re-hash of every image file this often (and on `shipyard drift --full`)."""
    heal: Bool = False
    """Replace drifted instances automatically (at most one heal per instance per interval, with backoff)."""


class RouterSpec(SpecModel):
    """Which data plane carries the traffic, and how much of it an instance is given at once:
    beyond its limit a request waits in a bounded queue instead of piling onto the instance's
    accept backlog (HAProxy's per-server maxconn + queue).

    With `workers: N` the embedded router runs N processes on the address, and every limit
    here holds for the address in total: each worker enforces floor(max_conns_per_instance / N)
    and floor(queue_size / N), so the spec refuses a max_conns_per_instance below N and a
    queue_size between 1 and N - 1 (a worker with no slot, or an accidental "no queue")."""

    kind: Literal["embedded", "haproxy"] = "embedded"
    """`embedded`: shipyard's own proxy process. `haproxy`: a real HAProxy 2.6+ (Debian package
    `haproxy`) whose traffic changes only through its Runtime API (router/haproxy/). With
    haproxy, `queue_timeout` bounds the wait in a track's queue but `queue_size` is not
    enforced (HAProxy's queue has no length limit), and `per_try_timeout` must stay 0."""
    max_conns_per_instance: Annotated[int, Strict(), Field(ge=1, le=10_000)] = 64
    """Requests in flight per instance. 64 is below the accept backlog of common servers
    (Python's socket default 128, asyncio 100, Node 511, gunicorn 2048), so the router alone
    never overflows one, and above what a typical worker pool serves at once, so it only
    queues when the instance is saturated anyway."""
    queue_size: Annotated[int, Strict(), Field(ge=0, le=100_000)] = 4096
    """Requests waiting per track when every instance is at its limit; beyond: 503 at once.
    4096 is the router's own listen backlog: what it accepted it can also hold. 0: no queue."""
    queue_timeout: PositiveDuration = 5.0
    """Longest a request waits in the queue before it is answered 503."""
    per_try_timeout: Duration = 0.0
    """An idempotent request whose instance sends no response head within this is sent once
    more to another instance of its track. 0 (default): off, since a slow endpoint would do
    its work twice; set it above the service's slowest normal answer."""
    workers: Annotated[int, Strict(), Field(ge=1, le=64)] = 1
    """Embedded router processes on the address, each a full data plane serving every service
    there from the same persisted tables: one Python process saturates one core, so N of them
    carry about N times the traffic. The kernel spreads new connections over them
    (SO_REUSEPORT, one listening socket per worker, all held by the daemon so a killed worker's
    clients wait in its backlog for its replacement); a connection stays on its worker.
    Metrics are summed over the workers. Not for haproxy, whose threads are another matter."""

    @model_validator(mode="after")
    def _haproxy_limits(self) -> RouterSpec:
        if self.kind == "haproxy" and self.per_try_timeout > 0:
            raise ValueError("per_try_timeout is not available with router kind haproxy (HAProxy retries "
                             "failed connects, never a slow answer): leave it 0, or use kind: embedded")
        if self.kind == "haproxy" and self.queue_size != type(self).model_fields["queue_size"].default:
            raise ValueError("queue_size is not available with router kind haproxy (its queue is bounded by "
                             "queue_timeout only): remove it, or use kind: embedded")
        if self.kind == "haproxy" and self.workers != 1:
            raise ValueError("workers is the number of embedded router processes, not available with router "
                             "kind haproxy (HAProxy's threads are its own configuration): remove it, or use "
                             "kind: embedded")
        if self.max_conns_per_instance < self.workers:
            raise ValueError(f"max_conns_per_instance {self.max_conns_per_instance} is below workers "
                             f"{self.workers}: each worker gets floor(max_conns_per_instance / workers) "
                             "requests per instance, so some would get none; raise it or lower workers")
        if 0 < self.queue_size < self.workers:
            raise ValueError(f"queue_size {self.queue_size} is below workers {self.workers}: each worker "
                             "queues floor(queue_size / workers), which would be 0 (no queue); give 0 "
                             "for no queue, or at least workers")
        return self


class TlsSpec(SpecModel):
    """TLS termination on `listen`: the router serves this certificate (PEM chain, the server's
    own certificate first) with this key (PEM, not encrypted). Paths are relative to the spec
    file; the files are read and checked at plan and deploy time, and what is served is a copy
    taken then (rotating a certificate is a deploy)."""

    cert: Text
    key: Text
    redirect_http: Listen | None = None
    """A plain-HTTP listener (host:port) answering every request with a 308 to https://<Host><path>
    on `listen`'s port."""


# -- notifications --------------------------------------------------------------------------------

NotifyEvent = Literal["rollout.started", "rollout.step", "rollout.paused", "rollout.promoted",
                      "rollout.succeeded", "rollout.failed", "rollout.aborted", "drift.found", "drift.cleared"]


class WebhookSpec(SpecModel):
    """One receiver of rollout and drift events. Header values that are secrets are named
    by environment variable, so the spec (stored with every rollout) never holds them."""

    url: Annotated[str, AfterValidator(http_url)]
    events: list[NotifyEvent] | None = None
    """Which events to send; default: all of them."""
    format: Literal["json", "slack"] = "json"
    headers: dict[HeaderName, Text] = Field(default_factory=dict)
    secret_headers: dict[HeaderName, EnvName] = Field(default_factory=dict)
    """Header name -> the daemon's environment variable holding its value."""

    @model_validator(mode="after")
    def _headers_apart(self) -> WebhookSpec:
        seen: set[str] = set()
        for name in [*self.headers, *self.secret_headers]:
            if name.lower() in seen:
                raise ValueError(f"header {name} is given twice (headers and secret_headers are one set)")
            seen.add(name.lower())
        return self

    def wants(self, event: str) -> bool:
        return self.events is None or event in self.events


class NotificationsSpec(SpecModel):
    """Webhooks told about rollouts and drift. Delivery is best effort, in the background:
    a receiver that is slow or down never holds a rollout back."""

    webhooks: list[WebhookSpec] = Field(default_factory=list)
    timeout: PositiveDuration = 5.0
    """Per request."""
    retries: Annotated[int, Strict(), Field(ge=0, le=20)] = 5
    backoff: PositiveDuration = 1.0
    """Wait before the first retry; doubled for each next one (with jitter), at most 5m."""
    queue: Annotated[int, Strict(), Field(ge=1, le=10_000)] = 100
    """Deliveries waiting per webhook; beyond that the oldest is dropped (and an event says so)."""


# -- the whole file -------------------------------------------------------------------------------

class Spec(SpecModel):
    """A whole shipyard.yaml. `source` and `base_dir` say where it came from and are not dumped."""

    service: ServiceName
    listen: Listen
    build: BuildSpec = Field(default_factory=BuildSpec)
    run: RunSpec
    health: HealthSpec = Field(default_factory=HealthSpec)
    replicas: Annotated[int, Strict(), Field(ge=1, le=64)] = 1
    strategy: StrategySpec = Field(default_factory=lambda: StrategySpec(blue_green=BlueGreenSpec()))
    database: DatabaseSpec | None = None
    drift: DriftSpec = Field(default_factory=DriftSpec)
    router: RouterSpec = Field(default_factory=RouterSpec)
    tls: TlsSpec | None = None
    domains: Domains | None = None
    """Host names (exact, or leading `*.` wildcards) this service answers on `listen`; several
    services may share one `listen` when each names its own (spec/domains.py)."""
    notifications: NotificationsSpec | None = None
    fleet: FleetSpec | None = None
    """Several hosts over SSH (spec/fleet.py); absent: everything runs on this machine."""

    @model_validator(mode="after")
    def _replicas_or_placement(self) -> Spec:
        if self.fleet is not None and self.replicas != 1:
            raise ValueError("replicas counts instances on this machine; with a fleet, fleet.placement says "
                             "how many run (per_host or total): remove replicas")
        return self

    @model_validator(mode="after")
    def _redirect_apart(self) -> Spec:
        if self.tls is not None and self.tls.redirect_http is not None:
            if split_listen(self.tls.redirect_http) == split_listen(self.listen):
                raise ValueError(f"tls.redirect_http {self.tls.redirect_http} is the `listen` address: "
                                 "give the plain-HTTP listener its own port (e.g. 80 beside 443)")
        return self

    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _source: str = PrivateAttr(default="<memory>")

    def _located(self, source: str, base_dir: Path) -> Spec:
        self._source = source
        self._base_dir = Path(base_dir).resolve()
        return self

    @property
    def source(self) -> str:
        return self._source

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def instance_count(self) -> int:
        """How many instances a release runs: `replicas` on one machine; on a fleet, placement's
        target on every host of the inventory (the engine lowers it while hosts are lost)."""
        if self.fleet is not None and self.fleet.hosts is not None:
            return self.fleet.target(len(self.fleet.hosts))
        return self.replicas

    @property
    def listen_host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return split_listen(self.listen)[1]

    def resolve_path(self, path: str) -> Path:
        """A path from the spec (build.context, database.migrations...) made absolute against base_dir."""
        return (self._base_dir / Path(path).expanduser()).resolve()

    @property
    def context_dir(self) -> Path:
        return self.resolve_path(self.build.context)

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON data (durations as strings) that `from_json_dict` turns back into an equal Spec.
        `domains` and `fleet` are left out when unset, so a spec stored before they existed equals it."""
        doc = self.model_dump(mode="json")
        for key in ("domains", "fleet"):
            if doc.get(key) is None:
                doc.pop(key, None)
        return doc

    def to_stored_dict(self) -> dict[str, Any]:
        """The json form plus the directory its relative paths (build.context, database.migrations,
        tls.cert...) are relative to: what a rollout or a slot keeps, so a spec read back from the
        store later (db contract, a resumed rollout, healing) finds the same files."""
        return self.to_json_dict() | {BASE_DIR_KEY: str(self._base_dir)}

    @classmethod
    def from_json_dict(cls, data: dict[str, Any], base_dir: str | Path, source: str = "<json>") -> Spec:
        """Raises SpecError (with key paths) if `data` is not a valid spec. A stored document's own
        base dir (to_stored_dict) wins over `base_dir`, which is for documents without one."""
        if _json_validator is None:
            raise RuntimeError("shipyard.spec.load registers the validator; import shipyard.spec")
        if BASE_DIR_KEY in data:
            data = dict(data)
            base_dir = data.pop(BASE_DIR_KEY)
        return _json_validator(data, source, Path(base_dir))


BASE_DIR_KEY = "_base_dir"
"""Where a stored spec came from (to_stored_dict); not a spec key: never in a spec file."""


def without_location(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored spec document as to_json_dict gives it: what comparisons of two specs look at."""
    return {k: v for k, v in doc.items() if k != BASE_DIR_KEY} if BASE_DIR_KEY in doc else doc


_json_validator: Callable[[dict[str, Any], str, Path], Spec] | None = None
"""Set by spec/load.py, which holds the validation with file:line errors. load imports this
module, so this one must not import load back: the dependency is handed in instead."""


def register_json_validator(validate: Callable[[dict[str, Any], str, Path], Spec]) -> None:
    global _json_validator
    _json_validator = validate
