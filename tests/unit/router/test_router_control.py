"""The control protocol: ops, validation, persistence, and the client's error messages."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from shipyard.errors import RouterError
from shipyard.router.control_client import RouterControlClient
from shipyard.router.dataplane.control_server import (
    ControlService,
    claim_socket,
    load_table,
    save_table,
    serve_control,
)
from shipyard.router.table import RoutingTable, Upstream


class Plane:
    """A stand-in data plane: the control service only needs these few members."""

    def __init__(self) -> None:
        self.service = "shop"
        self.listen = "127.0.0.1:8080"
        self.has_table = False
        self._table = RoutingTable("shop")
        self.swaps: list[int] = []
        self.series_asked: list[float] = []

    @property
    def table(self) -> RoutingTable:
        return self._table

    def swap(self, table: RoutingTable) -> None:
        self._table = table
        self.has_table = True
        self.swaps.append(table.version)

    def check(self, table: RoutingTable) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {"version": self._table.version, "tracks": {}}

    def series(self, since: float) -> dict[str, Any]:
        self.series_asked.append(since)
        return {"now": 1700000002.5, "series": {"blue": [{"t": 1700000001, "requests": 3, "errors": 1,
                                                          "latency": {"40": 3}}]}}


def table(version: int, service: str = "shop") -> dict[str, Any]:
    return RoutingTable(service, version, {"blue": (Upstream("blue-0", "127.0.0.1", 9001),)},
                        {"blue": 100}).to_dict()


def test_set_table_validates_persists_then_swaps(tmp: Path) -> None:
    plane = Plane()
    svc = ControlService(plane, tmp / "t.json", lambda: None)
    assert svc.handle({"op": "set_table", "table": table(5)})[0] == {"ok": True, "version": 5}
    assert json.loads((tmp / "t.json").read_text())["version"] == 5
    assert load_table(tmp / "t.json", "shop") == RoutingTable.from_dict(table(5))
    assert [p.name for p in tmp.iterdir()] == ["t.json"]  # no temp file left behind

    stale = svc.handle({"op": "set_table", "table": table(4)})[0]
    assert stale == {"ok": False, "error": "stale table: version 4 is older than the served version 5"}
    assert svc.handle({"op": "set_table", "table": table(5)})[0]["ok"]  # same version: re-apply is fine
    other = svc.handle({"op": "set_table", "table": table(6, service="cart")})[0]
    assert other["error"] == "the table is for service 'cart' but this router serves 'shop'"
    bad = svc.handle({"op": "set_table", "table": {**table(7), "weights": {"blue": 60}}})[0]
    assert bad["error"].startswith("invalid table: track weights must add up to 100")
    assert svc.handle({"op": "set_table"})[0]["ok"] is False
    assert plane.swaps == [5, 5]
    assert json.loads((tmp / "t.json").read_text())["version"] == 5  # refused tables are not persisted


def test_a_switch_is_served_before_its_fsync_and_undone_if_it_cannot_be_persisted(
        tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shipyard.router.dataplane.control_server as control
    plane = Plane()
    svc = ControlService(plane, tmp / "t.json", lambda: None)
    assert svc.handle({"op": "set_table", "table": table(5)})[0]["ok"]   # the first table: persisted, then served
    served_while_saving: list[int] = []
    real_save = control.save_table

    def save(path: Path, t: RoutingTable) -> None:
        served_while_saving.append(plane.table.version)
        real_save(path, t)

    monkeypatch.setattr(control, "save_table", save)
    assert svc.handle({"op": "set_table", "table": table(6)})[0] == {"ok": True, "version": 6}
    assert served_while_saving == [6]                   # the swap did not wait for the disk

    def full_disk(path: Path, t: RoutingTable) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(control, "save_table", full_disk)
    reply = svc.handle({"op": "set_table", "table": table(7)})[0]
    assert reply == {"ok": False, "error": f"cannot persist the table to {tmp / 't.json'}: No space left on device"}
    assert plane.table.version == 6 and plane.swaps == [5, 6, 7, 6]   # refused: back to what was acknowledged
    assert json.loads((tmp / "t.json").read_text())["version"] == 6


def test_other_ops_and_bad_requests(tmp: Path) -> None:
    plane = Plane()
    svc = ControlService(plane, tmp / "t.json", lambda: None)
    ping = svc.handle({"op": "ping"})[0]
    assert ping == {"ok": True, "pid": os.getpid(), "service": "shop", "listen": "127.0.0.1:8080",
                    "redirect": None, "version": 0}
    assert svc.handle({"op": "get_table"})[0] == {"ok": True, "table": None}
    assert svc.handle({"op": "stats"})[0] == {"ok": True, "stats": {"version": 0, "tracks": {}}}
    assert svc.handle({"op": "shutdown"}) == ({"ok": True}, True)
    assert "unknown op 'reload'" in svc.handle({"op": "reload"})[0]["error"]
    series = svc.handle({"op": "series", "since": 1700000000})[0]
    assert series == {"ok": True, "now": 1700000002.5, "series": {"blue": [
        {"t": 1700000001, "requests": 3, "errors": 1, "latency": {"40": 3}}]}}
    for bad in ("yesterday", None, True):
        assert svc.handle({"op": "series", "since": bad})[0] == {
            "ok": False, "error": f'series needs "since", a unix time in seconds, got {bad!r}'}
    assert svc.handle({"op": "series"})[0]["ok"] and plane.series_asked == [1700000000, 0]
    assert svc.handle(["ping"])[0]["ok"] is False


def test_load_table_ignores_what_it_cannot_trust(tmp: Path) -> None:
    assert load_table(tmp / "missing.json", "shop") is None
    (tmp / "bad.json").write_text("{not json")
    assert load_table(tmp / "bad.json", "shop") is None
    save_table(tmp / "cart.json", RoutingTable.from_dict(table(1, service="cart")))
    assert load_table(tmp / "cart.json", "shop") is None
    assert oct((tmp / "cart.json").stat().st_mode & 0o777) == "0o600"


async def test_socket_roundtrip_several_requests_per_connection(tmp: Path) -> None:
    plane = Plane()
    stopped = asyncio.Event()
    sock = tmp / "c.sock"
    await claim_socket(sock)
    server = await serve_control(sock, ControlService(plane, tmp / "t.json", stopped.set))
    try:
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
        client = RouterControlClient(sock)
        assert await client.set_table(RoutingTable.from_dict(table(3))) == 3
        assert (await client.get_table()) == RoutingTable.from_dict(table(3))
        with pytest.raises(RouterError, match="the router refused set_table: stale table"):
            await client.set_table(RoutingTable.from_dict(table(2)))
        assert await client.series(1700000000.5) == {"now": 1700000002.5, "series": {"blue": [
            {"t": 1700000001, "requests": 3, "errors": 1, "latency": {"40": 3}}]}}
        assert plane.series_asked == [1700000000.5]
        r, w = await asyncio.open_unix_connection(str(sock))
        w.write(b'{"op":"ping"}\nnot json\n{"op":"stats"}\n')
        answers = [json.loads(await r.readline()) for _ in range(3)]
        assert [a["ok"] for a in answers] == [True, False, True]
        assert answers[1]["error"].startswith("invalid JSON")
        w.close()
        with pytest.raises(RouterError, match="another router already answers"):
            await claim_socket(sock)
        await client.shutdown()
        await asyncio.wait_for(stopped.wait(), 2)
    finally:
        server.close()


async def test_client_errors_say_what_is_wrong(tmp: Path) -> None:
    with pytest.raises(RouterError, match="no router control socket at") as info:
        await RouterControlClient(tmp / "none.sock").ping()
    assert info.value.hint
    # a stale socket file (its process died): refused, and claim_socket removes it
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tmp / "stale.sock"))
    s.close()
    with pytest.raises(RouterError, match="nothing answers on the router control socket"):
        await RouterControlClient(tmp / "stale.sock").ping()
    await claim_socket(tmp / "stale.sock")
    assert not (tmp / "stale.sock").exists()
    # a process that accepts but never answers
    mute = await asyncio.start_unix_server(lambda r, w: None, str(tmp / "mute.sock"))
    try:
        with pytest.raises(RouterError, match="did not answer ping .* within 0.2s"):
            await RouterControlClient(tmp / "mute.sock", timeout=0.2).ping()
    finally:
        mute.close()
