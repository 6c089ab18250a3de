"""The fakes are worth driving the engine on only if they are the ports: every method of
each Protocol in engine/ports.py exists on its fake, with the same parameters and the same
sync/async nature; and the fake router's series keeps the documented contract."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from shipyard.engine import ports
from shipyard.rollout.records import Instance
from shipyard.router.table import RoutingTable, Upstream
from support.fakes import FakeClock, FakeHealthProbe, FakeRouter, FakeRuntime, InMemoryStore, run

FAKES: list[tuple[type, type]] = [(ports.Store, InMemoryStore), (ports.Runtime, FakeRuntime),
                                  (ports.Router, FakeRouter), (ports.HealthProbe, FakeHealthProbe),
                                  (ports.Clock, FakeClock), (ports.AuditTrail, type(InMemoryStore().audit))]


def members(protocol: type) -> dict[str, Any]:
    return {n: v for n, v in vars(protocol).items() if not n.startswith("_") and (callable(v) or isinstance(v, property))}


def params(f: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]


@pytest.mark.parametrize(("protocol", "fake"), FAKES, ids=[p.__name__ for p, _ in FAKES])
def test_each_fake_has_every_method_of_its_port(protocol: type, fake: type) -> None:
    wanted = members(protocol)
    assert wanted, f"{protocol.__name__} lists no methods?"
    for name, proto_f in wanted.items():
        fake_f = inspect.getattr_static(fake, name, None)
        assert fake_f is not None, f"{fake.__name__} lacks {protocol.__name__}.{name}"
        if isinstance(proto_f, property):
            continue
        assert inspect.iscoroutinefunction(fake_f) == inspect.iscoroutinefunction(proto_f), \
            f"{fake.__name__}.{name}: async in one, not in the other"
        assert params(fake_f) == params(proto_f), f"{fake.__name__}.{name}{inspect.signature(fake_f)} " \
                                                  f"!= {protocol.__name__}.{name}{inspect.signature(proto_f)}"


def table(version: int, weights: dict[str, float], releases: dict[str, str]) -> RoutingTable:
    tracks = {t: (Upstream(f"{t}-1", "127.0.0.1", 20_000 + i),) for i, t in enumerate(("blue", "green"))}
    return RoutingTable("shop", version, tracks, weights, releases=releases)


def test_the_fake_router_series_follows_the_tables_per_completed_second() -> None:
    clock = FakeClock()
    router = FakeRouter(clock, rps=100)
    router.traffic(release="v2", error_rate=0.2, latency_ms=40.0)

    async def main() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        clock.advance(0.5)                               # mid-second, as a router would be
        await router.apply(table(1, {"blue": 100.0}, {"blue": "v1", "green": "v2"}))
        await clock.sleep(3)
        await router.apply(table(2, {"blue": 75.0, "green": 25.0}, {"blue": "v1", "green": "v2"}))
        await clock.sleep(3)
        first = await router.series("shop", 0)
        again = await router.series("shop", int(first["now"]) - 1)
        with pytest.raises(Exception, match="stale table"):
            await router.apply(table(1, {"blue": 100.0}, {"blue": "v1"}))
        return first, again, await router.stats("shop")

    first, again, stats = run(main(), clock)
    now = first["now"]
    blue, green = first["series"]["blue"], first["series"]["green"]
    assert [p["t"] for p in blue] == sorted(p["t"] for p in blue) and all(p["t"] < now for p in blue + green)
    # seconds 1..5 after the first table (second 0 began before it; second 6 is not over): a
    # second is split by the table served at its start, and the second table came at 3.5
    assert [p["t"] - int(now) for p in blue] == [-5, -4, -3, -2, -1]
    assert [p["requests"] for p in blue] == [100, 100, 100, 75, 75]
    assert all(p["requests"] == 25 and p["errors"] == 5 for p in green)     # v2's error rate follows its release
    assert all(p["errors"] == 0 for p in blue)
    assert sum(green[0]["latency"].values()) == 25
    assert again["series"] == {}           # polled again with since = int(now) - 1: nothing twice
    assert stats["tracks"]["green"] == {"requests": 25 * len(green), "errors": 5 * len(green)}


def test_the_fake_runtime_and_health_probe_agree_on_a_crashed_and_a_broken_image(tmp_path: Any) -> None:
    from shipyard.rollout.records import LaunchSpec

    clock, runtime = FakeClock(), FakeRuntime()
    probe = FakeHealthProbe(runtime, clock)
    runtime.crashes("bad", exit_code=2)
    runtime.never_healthy("sick")

    def launch(image: str) -> LaunchSpec:
        return LaunchSpec(f"shop-blue-{image}", "shop", "blue", image, tmp_path, ["app"], {}, tmp_path / image)

    async def main() -> list[Any]:
        out: list[Any] = []
        for image in ("good", "bad", "sick"):
            inst: Instance = await runtime.start(launch(image))
            began = clock.monotonic()
            ok, why = await probe.wait_healthy(inst, path="/healthz", interval=0.5, timeout=1, healthy_threshold=3,
                                               deadline_s=5, is_alive=runtime.is_alive, exit_code=runtime.exit_code)
            out.append((image, ok, why.splitlines()[0] if why else "", clock.monotonic() - began,
                        (await probe.check(inst, "/healthz", 1)).ok))
        good = runtime.live()[0]
        runtime.kill(good.id)
        out.append((runtime.is_alive(good), runtime.exit_code(good), (await probe.check(good, "/healthz", 1)).error))
        return out

    assert run(main(), clock) == [
        ("good", True, "", 1.0, True),                  # 3 successes in a row: two intervals
        ("bad", False, "process exited (code 2) before becoming healthy; last log lines:", 0.0, False),
        ("sick", False, "not healthy after 5s: last probe: GET /healthz -> 503", 5.0, False),
        (False, -9, "connection refused"),
    ]
