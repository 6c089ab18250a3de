"""The helper protocol as pure logic: framing, the helper's replies to bad requests (served
in-process from byte buffers), and the client's matching of replies to calls."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from shipyard.fleet.remote import protocol
from shipyard.fleet.remote.client import HelperClient, HelperError, HelperGone
from shipyard.fleet.remote.helper import Helper
from shipyard.fleet.remote.protocol import (
    OpError,
    ProtocolError,
    decode_header,
    read_header,
    require,
    write_frame,
)


def test_a_frame_carries_its_data_after_the_header() -> None:
    buf = io.BytesIO()
    write_frame(buf, {"id": 1, "ok": True}, b"\n\x00binary\nbytes")
    write_frame(buf, {"id": 2, "ok": True})
    buf.seek(0)
    first = read_header(buf)
    assert first == {"id": 1, "ok": True, "size": 14}
    assert buf.read(first["size"]) == b"\n\x00binary\nbytes"
    assert read_header(buf) == {"id": 2, "ok": True}
    assert read_header(buf) is None


@pytest.mark.parametrize("line, why", [
    (b'{"id": 1}', "ended in the middle"),
    (b"not json\n", "not JSON"),
    (b"[1, 2]\n", "not a JSON object"),
    (b'{"size": -1}\n', "bad frame size"),
    (b'{"size": "3"}\n', "bad frame size"),
    (b'{"size": true}\n', "bad frame size"),
])
def test_a_broken_header_is_a_protocol_error(line: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        decode_header(line)


def test_a_header_longer_than_the_limit_is_refused() -> None:
    with pytest.raises(ProtocolError, match="longer than"):
        read_header(io.BytesIO(b"{" + b" " * protocol.MAX_HEADER + b"}\n"))


def test_require_checks_types_and_never_takes_a_bool_for_an_int() -> None:
    assert require({"n": 3}, "n", int) == 3
    assert require({}, "n", int, 7) == 7
    for args in ({}, {"n": True}, {"n": "3"}):
        with pytest.raises(OpError) as err:
            require(args, "n", int)
        assert err.value.code == "bad_request" and "'n'" in err.value.message


def _serve(tmp_path: Path, frames: list[tuple[dict[str, Any], bytes | None]], tail: bytes = b"") -> tuple[int, list[Any]]:
    stdin = io.BytesIO()
    for header, data in frames:
        write_frame(stdin, header, data)
    stdin.write(tail)
    stdin.seek(0)
    stdout = io.BytesIO()
    rc = Helper(tmp_path, str(tmp_path / "none.pyz")).serve(stdin, stdout)
    stdout.seek(0)
    replies = []
    while (h := read_header(stdout)) is not None:
        replies.append((h, stdout.read(h["size"]) if h.get("size") else None))
    return rc, replies


def _req(rid: Any, op: str, args: Any = None, v: Any = 1) -> dict[str, Any]:
    return {"v": v, "id": rid, "op": op, "args": args or {}}


def test_every_failure_is_a_structured_reply_and_the_helper_stays_in_step(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    blob = b"some object\n"
    sha = hashlib.sha256(blob).hexdigest()
    monkeypatch.setattr(Helper, "hello", lambda self: 1 / 0)
    rc, replies = _serve(tmp_path, [
        (_req(1, "hello", v=2), None),
        (_req(2, "no.such.op"), None),
        ({"v": 1, "id": 3, "op": "objects.missing", "args": [1]}, None),
        (_req(4, "objects.missing", {"sha256": ["ABC"]}), None),
        (_req(5, "objects.put", {"sha256": sha}), blob),
        (_req(6, "objects.put", {"sha256": sha}), blob),            # already there: its data is skipped
        (_req(7, "objects.put", {"sha256": sha.replace(sha[0], "f" if sha[0] != "f" else "e")}), blob),
        (_req("eight", "hello"), None),
        (_req(9, "objects.missing", {"sha256": [sha]}), None),
    ])
    assert rc == 0
    codes = [(h["id"], h["ok"], (h.get("error") or {}).get("code")) for h, _ in replies]
    assert codes == [(1, False, "protocol"), (2, False, "unknown_op"), (3, False, "bad_request"),
                     (4, False, "bad_request"), (5, True, None), (6, True, None), (7, False, "hash_mismatch"),
                     ("eight", False, "internal"), (9, True, None)]
    assert replies[0][0]["error"]["hint"] and "objects.put" in replies[1][0]["error"]["hint"]
    assert replies[4][0]["result"] == {"stored": True, "size": len(blob)}
    assert replies[5][0]["result"] == {"stored": False}
    assert "ZeroDivisionError" in replies[7][0]["error"]["message"]
    assert replies[8][0]["result"] == {"missing": []}


def test_a_stream_ending_inside_a_frame_stops_the_helper_with_a_reply(tmp_path: Path) -> None:
    stdin_tail = json.dumps(_req(1, "objects.put", {"sha256": "a" * 64}) | {"size": 100}).encode() + b"\nshort"
    rc, replies = _serve(tmp_path, [], tail=stdin_tail)
    assert rc == 2
    [(header, _)] = replies
    assert header["id"] is None and header["error"]["code"] == "protocol"
    assert "inside a frame" in header["error"]["message"]


class _Wire:
    """A writer that records what the client sends."""

    def __init__(self) -> None:
        self.sent = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent += data

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def close(self) -> None:
        self.closed = True


def _sent_ids(wire: _Wire) -> list[int]:
    return [json.loads(line)["id"] for line in bytes(wire.sent).splitlines()]


async def test_the_client_matches_replies_by_id_and_carries_data() -> None:
    reader, wire = asyncio.StreamReader(), _Wire()
    client = HelperClient(reader, wire)
    a = asyncio.ensure_future(client.call("hello"))
    b = asyncio.ensure_future(client.logs("web-1", tail=5))
    c = asyncio.ensure_future(client.missing(["a" * 64]))
    while len(_sent_ids(wire)) < 3:
        await asyncio.sleep(0)
    ida, idb, idc = _sent_ids(wire)
    reader.feed_data(protocol.encode_header({"id": idc, "ok": False, "error": {"code": "disk_full", "message": "m",
                                                                                 "hint": "h", "details": {"x": 1}}}))
    reader.feed_data(protocol.encode_header({"id": idb, "ok": True, "size": 5,
                                             "result": {"offset": 3, "next_offset": 8, "file_size": 8}}) + b"hello")
    reader.feed_data(protocol.encode_header({"id": ida, "ok": True, "result": {"protocol": 1}}))
    assert await a == ({"protocol": 1}, None)
    chunk = await b
    assert chunk.data == b"hello" and chunk.next_offset == 8
    with pytest.raises(HelperError) as err:
        await c
    assert err.value.disk_full and err.value.hint == "h" and err.value.details == {"x": 1}
    pending = asyncio.ensure_future(client.call("hello"))
    await asyncio.sleep(0.01)
    reader.feed_eof()
    with pytest.raises(HelperGone):
        await pending
    with pytest.raises(HelperGone):
        await client.call("hello")


async def test_the_client_gives_up_on_a_reply_that_is_not_a_frame() -> None:
    reader, wire = asyncio.StreamReader(), _Wire()
    client = HelperClient(reader, wire)
    call = asyncio.ensure_future(client.call("hello"))
    await asyncio.sleep(0)
    reader.feed_data(b"Traceback (most recent call last):\n")
    with pytest.raises(HelperGone, match="not JSON"):
        await call


class _StuckWire(_Wire):
    """A peer that stops reading: drain never returns."""

    async def drain(self) -> None:
        await asyncio.Event().wait()


async def test_a_put_cancelled_halfway_closes_the_channel(tmp_path: Path) -> None:
    src = tmp_path / "obj"
    src.write_bytes(b"x" * (3 << 20))
    reader, wire = asyncio.StreamReader(), _StuckWire()
    client = HelperClient(reader, wire)
    put = asyncio.ensure_future(client.put("a" * 64, src))
    while len(wire.sent) < protocol.CHUNK:
        await asyncio.sleep(0)
    put.cancel()
    with pytest.raises(asyncio.CancelledError):
        await put
    assert wire.closed and len(wire.sent) < 3 << 20
    with pytest.raises(HelperGone, match="cancelled halfway"):
        await client.hello()


def test_long_messages_travel_framed_and_no_line_exceeds_the_inline_limit(tmp_path: Path) -> None:
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20_000)]
    request, data = protocol.pack(_req(1, "objects.missing", {"sha256": shas}), None)
    assert request == {"id": 1, "framed": True} and data is not None and len(data) > 1_000_000
    stdin = io.BytesIO()
    write_frame(stdin, request, data)
    write_frame(stdin, *protocol.pack(_req(2, "hello", v=9), None))    # short: not framed
    stdin.seek(0)
    stdout = io.BytesIO()
    Helper(tmp_path, str(tmp_path / "none.pyz")).serve(stdin, stdout)
    lines = stdout.getvalue()
    stdout.seek(0)
    first = read_header(stdout)
    assert first is not None and first["framed"] and first["id"] == 1
    reply, _ = protocol.unpack(first, stdout.read(first["size"]))
    assert reply["ok"] and reply["result"]["missing"] == shas
    second = read_header(stdout)
    assert second is not None and second["id"] == 2 and second["error"]["code"] == "protocol"
    header_lines = [lines.split(b"\n", 1)[0], lines.rsplit(b"\n", 2)[-2]]
    assert all(len(line) < protocol.INLINE_LIMIT for line in header_lines)


async def test_the_client_sends_and_reads_framed_messages_with_a_default_stream_reader() -> None:
    reader, wire = asyncio.StreamReader(), _Wire()        # asyncio's default 64 KiB line limit
    client = HelperClient(reader, wire)
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(5_000)]
    call = asyncio.ensure_future(client.missing(shas))
    while not wire.sent:
        await asyncio.sleep(0)
    sent = io.BytesIO(bytes(wire.sent))
    header = read_header(sent)
    assert header is not None and header["framed"]
    request, _ = protocol.unpack(header, sent.read(header["size"]))
    assert request["args"]["sha256"] == shas
    reply, data = protocol.pack({"id": request["id"], "ok": True, "result": {"missing": shas}}, None)
    assert data is not None
    reader.feed_data(protocol.encode_header({**reply, "size": len(data)}) + data)
    assert await call == shas


def test_host_facts_are_the_hellos_facts_asked_again(tmp_path: Path) -> None:
    rc, replies = _serve(tmp_path, [(_req(1, "hello"), None), (_req(2, "host.facts"), None)])
    assert rc == 0 and all(h["ok"] for h, _ in replies)
    hello, facts = replies[0][0]["result"], replies[1][0]["result"]
    assert set(facts) == {"helper_version", "bundle_sha256", "python", "root", "host"}
    assert {k: hello[k] for k in facts if k != "host"} == {k: v for k, v in facts.items() if k != "host"}
    host = facts["host"]
    assert host["disk"]["path"] == str(tmp_path) and 0 < host["disk"]["free"] <= host["disk"]["total"]
    assert len(host["load"]) == 3 and host["cpu_count"] >= 1 and host["boot_id"]
    assert host["memory"]["total"] > 0
