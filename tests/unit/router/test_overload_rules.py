"""The data plane's overload rules on their own: the in-flight limit per instance, the
panic threshold for ejections on weak evidence, and the per-track waiting queue."""

from __future__ import annotations

import asyncio
import time

from shipyard.router.dataplane.ejection import REFUSED, SILENT, TIMEOUT
from shipyard.router.dataplane.metrics import TrackMetrics
from shipyard.router.dataplane.routes import FULL, TrackRoute
from shipyard.router.dataplane.upstream import UNPROVEN_LIMIT, UpstreamState
from shipyard.router.dataplane.waiting import WaitingQueue
from shipyard.router.table import RoutingTable, TableError, Upstream


def route(n: int, limit: int = 2) -> TrackRoute:
    return TrackRoute("blue", [UpstreamState(Upstream(f"u{i}", "127.0.0.1", 9000 + i)) for i in range(n)],
                      TrackMetrics(), limit)


def eject(u: UpstreamState, why: str) -> None:
    u.metrics.ejected, u.ejected_for = True, why


def test_an_instance_at_its_limit_is_skipped_and_a_full_track_says_full() -> None:
    r = route(2, limit=2)
    a, b = r.upstreams
    a.metrics.inflight = 2
    assert [r.pick(None) for _ in range(3)] == [b, b, b]
    b.metrics.inflight = 2
    assert r.pick(None) is FULL
    assert r.pick([a, b]) is None          # nothing left to try is not "wait"
    a.metrics.inflight = 1
    assert r.pick(None) is a


def test_unanswered_new_connections_are_bounded_per_instance() -> None:
    r = route(1, limit=100)
    u = r.upstreams[0]
    u.unproven = UNPROVEN_LIMIT
    assert r.pick(None) is FULL            # no pooled connection and 8 new ones still unanswered
    u.idle.append(object())  # type: ignore[arg-type]  # a pooled connection is ready: it can be used
    assert r.pick(None) is u


def test_a_busy_healthy_instance_is_waited_for_rather_than_a_refusing_one_tried() -> None:
    r = route(2, limit=1)
    a, b = r.upstreams
    a.metrics.inflight = 1
    eject(b, REFUSED)
    assert r.pick(None) is FULL
    a.metrics.inflight = 0
    assert r.pick(None) is a
    eject(a, REFUSED)                      # all refused: one is still tried (it may be back)
    assert r.pick(None) is a


def test_timeouts_never_eject_below_half_of_the_track() -> None:
    r = route(2)
    a, b = r.upstreams
    assert r.may_eject(a)                  # one of two left: 50 %, not fewer
    eject(a, TIMEOUT)
    assert not r.may_eject(b)              # the last one: never on a timeout
    assert r.may_eject(a)                  # already out: no change
    r4 = route(4)
    eject(r4.upstreams[0], TIMEOUT)
    eject(r4.upstreams[1], SILENT)
    assert not r4.may_eject(r4.upstreams[2])


def test_panic_routes_to_soft_ejected_instances_but_never_to_refusing_ones() -> None:
    r = route(4)
    a, b, c, d = r.upstreams
    eject(a, REFUSED)
    eject(b, REFUSED)
    eject(c, TIMEOUT)                      # 1 of 4 left in rotation: below 50 %, panic
    assert {r.pick(None).id for _ in range(4)} == {"u2", "u3"}  # type: ignore[union-attr]
    c.metrics.ejected, c.ejected_for = False, ""
    eject(d, TIMEOUT)                      # 1 of 4 again
    assert {r.pick(None).id for _ in range(4)} == {"u2", "u3"}  # type: ignore[union-attr]
    r2 = route(4)
    eject(r2.upstreams[0], TIMEOUT)        # 3 of 4 in rotation: no panic, the soft one stays out
    assert "u0" not in {r2.pick(None).id for _ in range(6)}  # type: ignore[union-attr]


class Waiter:
    def __init__(self, name: str, queued_at: float) -> None:
        self.name = name
        self.queued_at = queued_at
        self.waiting_in: WaitingQueue | None = None
        self.expired: float | None = None

    def queue_expired(self, waited: float) -> None:
        self.expired = waited


async def test_queue_is_fifo_bounded_and_counts_only_live_waiters() -> None:
    loop = asyncio.get_running_loop()
    m = TrackMetrics()
    q = WaitingQueue(2, 60.0, m)
    w1, w2, w3 = (Waiter(n, loop.time()) for n in ("w1", "w2", "w3"))
    assert q.push(w1, loop) and q.push(w2, loop)
    assert not q.push(w3, loop)            # full
    assert q.push(w3, loop, force=True)    # a swap's re-routed waiter keeps its place anyway
    assert (q.count, m.queued) == (3, 3)
    q.forget(w1)                           # its client left
    assert (q.count, m.queued) == (2, 2)
    assert q.head() is w2 and q.pop() is w2
    assert [w.name for w in q.take_all()] == ["w3"]
    assert (q.count, m.queued, q.timer) == (0, 0, None)


async def test_queue_timeout_expires_the_oldest_first_with_one_timer() -> None:
    loop = asyncio.get_running_loop()
    q = WaitingQueue(10, 0.2, TrackMetrics())
    first = Waiter("first", loop.time())
    q.push(first, loop)
    await asyncio.sleep(0.1)
    second = Waiter("second", loop.time())
    q.push(second, loop)
    t0 = time.monotonic()
    while first.expired is None:
        await asyncio.sleep(0.01)
    assert second.expired is None and first.expired >= 0.2 - 0.002
    while second.expired is None:
        await asyncio.sleep(0.01)
    assert 0.05 < time.monotonic() - t0 < 0.5 and q.count == 0


def test_table_carries_the_limits_and_old_tables_load_with_the_defaults() -> None:
    t = RoutingTable("shop", 3, {"blue": (Upstream("b", "127.0.0.1", 1),)}, {"blue": 100.0},
                     max_conns_per_instance=8, queue_size=0, queue_timeout=1.5, per_try_timeout=0.25)
    back = RoutingTable.from_dict(t.to_dict())
    assert (back.max_conns_per_instance, back.queue_size, back.queue_timeout, back.per_try_timeout) == (8, 0, 1.5, 0.25)
    old = t.to_dict()
    for k in ("max_conns_per_instance", "queue_size", "queue_timeout", "per_try_timeout"):
        del old[k]
    legacy = RoutingTable.from_dict(old)
    assert (legacy.max_conns_per_instance, legacy.queue_size, legacy.queue_timeout, legacy.per_try_timeout) == (
        64, 4096, 5.0, 0.0)


def test_table_refuses_limits_it_cannot_serve() -> None:
    for kw, words in (({"max_conns_per_instance": 0}, "max_conns_per_instance must be a whole number >= 1"),
                      ({"queue_size": -1}, "queue_size must be a whole number >= 0"),
                      ({"queue_timeout": 0}, "queue_timeout must be longer than 0s"),
                      ({"per_try_timeout": float("nan")}, "per_try_timeout must be a number of seconds >= 0")):
        try:
            RoutingTable("shop", **kw)  # type: ignore[arg-type]
        except TableError as e:
            assert words in str(e), (kw, e)
        else:
            raise AssertionError(f"{kw} accepted")
