"""A whole shipyard engine on fakes: one store, runtime, router and clock that outlive
any number of controllers (so a test can "crash" one and start the next), plus helpers
to write small specs and to take snapshots of the end state."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from shipyard.engine.controller import Controller
from shipyard.engine.deps import Deps
from shipyard.paths import StatePaths
from support.fakes import (
    FakeClock,
    FakeFleet,
    FakeHealthProbe,
    FakeImages,
    FakeRouter,
    FakeRuntime,
    InMemoryStore,
    run,
)

SPEC_HEAD = """\
service: shop
listen: 127.0.0.1:18080
build: {{context: ./app}}
run: {{command: [app, --port, "${{PORT}}"], stop_timeout: 1s}}
health: {{path: /healthz, interval: 500ms, timeout: 1s, healthy_threshold: 2, start_timeout: 10s}}
replicas: {replicas}
drift: {{interval: 1h, full_interval: 24h}}
"""

BLUE_GREEN = """\
strategy:
  blue_green:
    preview_checks:
      - {path: /, expect_status: 200}
      - {path: /products, expect_status: 200}
    auto_promote: true
    scale_down_delay: 10m
"""

CANARY = """\
strategy:
  canary:
    steps:
      - set_weight: 10
      - pause: 10s
      - set_weight: 50
      - analysis: {duration: 10s}
      - set_weight: 80
    analysis: {min_requests: 50, interval: 1s}
"""


def write_spec(root: Path, strategy: str = BLUE_GREEN, replicas: int = 2, name: str = "shop.yaml") -> Path:
    (root / "app").mkdir(parents=True, exist_ok=True)
    path = root / name
    path.write_text(SPEC_HEAD.format(replicas=replicas) + strategy)
    return path


def forbid_processes_and_sockets(monkeypatch: pytest.MonkeyPatch, attempts: list[str]) -> None:
    """A test on the fakes that reaches for a real process or connection fails: the attempt
    raises, and is also recorded (the engine logs and swallows some errors by design, so
    the test checks `attempts` at the end)."""
    def refuse(what: str) -> Any:
        def refused(*args: Any, **kwargs: Any) -> Any:
            attempts.append(f"{what}: {args[1:3]!r}")
            raise AssertionError(f"a test on the fakes tried to {what}")
        return refused

    for name in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, name, refuse(f"{name} a socket"))
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("start a process"))
    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "create_connection", refuse("open a connection"))
    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "subprocess_exec", refuse("start a process"))


@dataclass
class World:
    root: Path
    clock: FakeClock = field(default_factory=FakeClock)
    images: FakeImages = field(default_factory=FakeImages)
    runtime: FakeRuntime = field(default_factory=FakeRuntime)
    fleet: FakeFleet = field(default_factory=FakeFleet)
    store: InMemoryStore = field(init=False)
    router: FakeRouter = field(init=False)
    health: FakeHealthProbe = field(init=False)
    io_attempts: list[str] = field(default_factory=list)
    """Real processes or connections the engine tried to use (see forbid_processes_and_sockets)."""

    def __post_init__(self) -> None:
        self.store = InMemoryStore(self.clock)
        self.router = FakeRouter(self.clock)
        self.health = FakeHealthProbe(self.runtime, self.clock, self.router)

    def deps(self) -> Deps:
        return Deps(store=self.store, images=self.images, runtime=self.runtime,  # type: ignore[arg-type]
                    router=self.router, paths=StatePaths(self.root / "state"), health=self.health,
                    clock=self.clock, env={}, preview_secret="fake-world-api-token", fleet=self.fleet)

    def controller(self) -> Controller:
        """A new controller on the world's (surviving) store, runtime and router; not started."""
        return Controller(self.deps())

    def forbid_io(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Every port is a fake: a real socket or process would be a leak of the engine's layering."""
        forbid_processes_and_sockets(monkeypatch, self.io_attempts)

    # -- what a test compares -------------------------------------------------------------

    def table(self, service: str = "shop") -> dict[str, Any] | None:
        """The router's current table without its version (which a resumed run may number differently)."""
        t = self.router.tables.get(service)
        if t is None:
            return None
        d = t.to_dict()
        d.pop("version")
        d["tracks"] = {k: len(v) for k, v in d["tracks"].items()}   # instance ids are random: count them
        return d

    def end_state(self, service: str = "shop") -> dict[str, Any]:
        """Phase of the last rollout, live slot, slots (state, image, weight, retiring), table, live instances."""
        svc = self.store.get_service(service)
        last = self.store.rollouts(service, 1)
        if svc is None:      # unregistered (a first release that never served): nothing of it may remain
            return {"phase": str(last[0].phase) if last else None,
                    "reason": last[0].reason.split(":", 1)[0] if last else None,
                    "live_slot": "(unregistered)", "slots": {}, "table": self.table(service),
                    "router_listens": service in self.router.listen,
                    "instances": sorted((i.slot, i.image_id) for i in self.runtime.live(service)),
                    "store_instances": sorted((i.slot, i.image_id, st) for i, st in self.store.instances(service))}
        return {
            "phase": str(last[0].phase) if last else None,
            # why it ended, not the detail (instance ids are random; a resumed analysis may decide a second later)
            "reason": last[0].reason.split(":", 1)[0] if last else None,
            "live_slot": svc.active_slot,
            # a warm slot without retire_at would never retire: whether it has one is part of the state
            "slots": {k: (s.state, s.image_id, s.weight, s.retire_at is not None) for k, s in svc.slots.items()},
            "table": self.table(service),
            "instances": sorted((i.slot, i.image_id) for i in self.runtime.live(service)),
            "store_instances": sorted((i.slot, i.image_id, st) for i, st in self.store.instances(service)),
        }


def drive(world: World, body: Callable[[Controller], Awaitable[None]], env: dict[str, str] | None = None) -> None:
    """Start a controller on `world` (with the daemon environment `env`, if given), run `body`
    with it in virtual time, always close it; nothing may have reached the real world."""
    async def main() -> None:
        c = world.controller() if env is None else Controller(replace(world.deps(), env=env))
        await c.start()
        try:
            await body(c)
        finally:
            await c.close()
    run(main(), world.clock)
    assert world.io_attempts == []
