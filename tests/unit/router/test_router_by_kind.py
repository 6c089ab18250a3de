"""RouterByKind: each service goes to the data plane its spec names, remembered across daemons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shipyard.errors import RouterError
from shipyard.router.by_kind import RouterByKind
from shipyard.router.table import RoutingTable


class Plane:
    """Records what reached it (the engine's fakes count calls; this one only names them)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[tuple[str, str]] = []

    async def ensure(self, service: str, listen: str, *, redirect_http: str | None = None) -> dict[str, Any] | None:
        self.calls.append(("ensure", service))
        return None

    def exited(self, service: str) -> bool:
        return self.name == "haproxy"

    async def apply(self, table: RoutingTable) -> None:
        self.calls.append(("apply", table.service))

    async def current(self, service: str) -> RoutingTable | None:
        return RoutingTable(service, version=len(self.name))

    def pids(self, service: str) -> set[int]:
        return {len(self.name)}

    async def stats(self, service: str) -> dict[str, Any]:
        return {"by": self.name}

    async def series(self, service: str, since: float) -> dict[str, Any]:
        return {"by": self.name, "since": since}

    async def stop(self, service: str) -> None:
        self.calls.append(("stop", service))


async def test_each_service_is_served_by_its_kind_and_remembered(tmp_path: Path) -> None:
    emb, hap = Plane("embedded"), Plane("haproxy")
    memory = tmp_path / "kinds.json"
    r = RouterByKind({"embedded": emb, "haproxy": hap}, memory)
    await r.ensure("shop", "127.0.0.1:1", "haproxy")
    await r.ensure("cart", "127.0.0.1:2")                  # no kind, none known: the default
    await r.apply(RoutingTable("shop"))
    await r.apply(RoutingTable("cart"))
    assert hap.calls == [("ensure", "shop"), ("apply", "shop")]
    assert emb.calls == [("ensure", "cart"), ("apply", "cart")]
    assert r.exited("shop") and not r.exited("cart")
    assert r.pids("shop") == {7} and (await r.stats("shop")) == {"by": "haproxy"}
    assert (await r.series("cart", 5.0)) == {"by": "embedded", "since": 5.0}
    # a new daemon: a repair (no kind) goes where the service was
    again = RouterByKind({"embedded": emb, "haproxy": hap}, memory)
    await again.ensure("shop", "127.0.0.1:1")
    assert hap.calls[-1] == ("ensure", "shop") and again.kind_of("shop") == "haproxy"


async def test_a_service_moved_to_another_kind_is_stopped_on_the_old_one_first(tmp_path: Path) -> None:
    emb, hap = Plane("embedded"), Plane("haproxy")
    r = RouterByKind({"embedded": emb, "haproxy": hap}, tmp_path / "kinds.json")
    await r.ensure("shop", "127.0.0.1:1", "embedded")
    await r.ensure("shop", "127.0.0.1:1", "haproxy")
    assert emb.calls == [("ensure", "shop"), ("stop", "shop")] and hap.calls == [("ensure", "shop")]
    await r.stop("shop")
    assert hap.calls[-1] == ("stop", "shop") and r.kind_of("shop") == "embedded"


async def test_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    r = RouterByKind({"embedded": Plane("embedded")}, tmp_path / "kinds.json")
    with pytest.raises(RouterError, match="unknown router kind 'nginx'"):
        await r.ensure("shop", "127.0.0.1:1", "nginx")


async def test_domains_reach_the_kind_that_serves_the_service(tmp_path: Path) -> None:
    seen: list[tuple[str, tuple[str, ...]]] = []

    class HostPlane(Plane):
        async def ensure(self, service: str, listen: str, *, redirect_http: str | None = None,
                         domains: tuple[str, ...] = ()) -> dict[str, Any] | None:
            seen.append((service, domains))
            return None

    r = RouterByKind({"embedded": HostPlane("embedded"), "haproxy": Plane("haproxy")}, tmp_path / "kinds.json")
    await r.ensure("shop", "127.0.0.1:1", domains=["shop.test", "*.shop.test"])
    await r.ensure("shop", "127.0.0.1:1")
    await r.ensure("cart", "127.0.0.1:2", "haproxy")       # none given: a plane without them is not asked
    assert seen == [("shop", ("shop.test", "*.shop.test")), ("shop", ())]


async def test_workers_reach_the_embedded_router_only(tmp_path: Path) -> None:
    seen: list[tuple[str, int | None]] = []

    class WorkerPlane(Plane):
        async def ensure(self, service: str, listen: str, *, redirect_http: str | None = None,
                         workers: int | None = None) -> dict[str, Any] | None:
            seen.append((service, workers))
            return None

    r = RouterByKind({"embedded": WorkerPlane("embedded"), "haproxy": Plane("haproxy")}, tmp_path / "kinds.json")
    await r.ensure("shop", "127.0.0.1:1", workers=2)
    await r.ensure("shop", "127.0.0.1:1", workers=1)      # back to one: the embedded router is told so
    await r.ensure("shop", "127.0.0.1:1")                 # a repair: as many as it has
    await r.ensure("cart", "127.0.0.1:2", "haproxy", workers=1)    # HAProxy has no workers: not asked
    assert seen == [("shop", 2), ("shop", 1), ("shop", None)]
