"""Writes held to the end of the loop iteration (dataplane/outbox.py): one write per
connection per iteration, order kept, sent before a graceful close, dropped by an abort."""

from __future__ import annotations

from typing import Any

from shipyard.router.dataplane.outbox import OUT_LIMIT, Outbox, Sender


class Loop:
    """The outbox's loop: call_soon is remembered; the test runs it as the loop would."""

    def __init__(self) -> None:
        self.soon: list[Any] = []

    def call_soon(self, callback: Any) -> None:
        self.soon.append(callback)

    def run_soon(self) -> None:
        soon, self.soon = self.soon, []
        for cb in soon:
            cb()


class Transport:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[bytes]]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", [data]))

    def writelines(self, data: list[bytes]) -> None:
        self.calls.append(("writelines", list(data)))


class Conn(Sender):
    __slots__ = ("transport", "outbox", "closed", "out", "out_size", "tls")

    def __init__(self, outbox: Outbox | None, tls: bool = False) -> None:
        self.transport = Transport()  # type: ignore[assignment]
        self.outbox, self.closed, self.out, self.out_size, self.tls = outbox, False, None, 0, tls


def setup(n: int = 1, tls: bool = False) -> tuple[Loop, Outbox, list[Conn]]:
    loop = Loop()
    box = Outbox(loop)  # type: ignore[arg-type]
    return loop, box, [Conn(box, tls) for _ in range(n)]


def test_writes_wait_for_the_end_of_the_iteration_then_leave_one_call_per_connection() -> None:
    loop, _box, (a, b) = setup(2)
    a.send(b"head-a")
    b.send(b"resp-b")
    a.send(b"body-a")
    assert a.transport.calls == [] and b.transport.calls == []  # type: ignore[union-attr]
    assert len(loop.soon) == 1  # one callback per iteration, not one per write
    loop.run_soon()
    assert a.transport.calls == [("writelines", [b"head-a", b"body-a"])]  # type: ignore[union-attr]
    assert b.transport.calls == [("write", [b"resp-b"])]  # type: ignore[union-attr]
    a.send(b"next")  # a new iteration arms a new flush
    assert len(loop.soon) == 1
    loop.run_soon()
    assert a.transport.calls[-1] == ("write", [b"next"])  # type: ignore[union-attr]


def test_over_tls_the_held_buffers_are_joined_into_one_record() -> None:
    loop, _box, (a,) = setup(1, tls=True)
    a.send(b"head")
    a.send(b"body")
    loop.run_soon()
    assert a.transport.calls == [("write", [b"headbody"])]  # type: ignore[union-attr]


def test_flush_out_sends_now_and_the_iterations_flush_has_nothing_left() -> None:
    loop, _box, (a,) = setup()
    a.send(b"last answer")
    a.flush_out()  # what a graceful close does first
    assert a.transport.calls == [("write", [b"last answer"])]  # type: ignore[union-attr]
    loop.run_soon()
    assert len(a.transport.calls) == 1  # type: ignore[union-attr]


def test_an_aborted_or_lost_connection_writes_nothing_it_held() -> None:
    loop, _box, (a, b) = setup(2)
    a.send(b"x")
    a.drop_out()
    b.send(b"y")
    b.closed = True  # the peer went away before the end of the iteration
    loop.run_soon()
    assert a.transport.calls == [] and b.transport.calls == []  # type: ignore[union-attr]


def test_large_writes_go_at_once_after_what_was_held_so_order_is_kept() -> None:
    loop, _box, (a,) = setup()
    big = b"z" * (OUT_LIMIT + 1)
    a.send(big)  # nothing held: written now (flow control sees it at once)
    assert a.transport.calls == [("write", [big])]  # type: ignore[union-attr]
    a.send(b"head")
    a.send(b"b" * OUT_LIMIT)  # over the limit with what is held: both now, in order
    assert a.transport.calls[-1] == ("writelines", [b"head", b"b" * OUT_LIMIT])  # type: ignore[union-attr]
    loop.run_soon()
    assert len(a.transport.calls) == 2  # type: ignore[union-attr]


def test_without_an_outbox_a_send_is_a_plain_write() -> None:
    a = Conn(None)
    a.send(b"now")
    assert a.transport.calls == [("write", [b"now"])]  # type: ignore[union-attr]
