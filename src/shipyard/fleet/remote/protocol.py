"""The helper's wire protocol, shared by the helper (blocking files) and the client (asyncio).

A frame is one JSON object on one line (UTF-8, ``\\n``-terminated), optionally followed by
exactly ``size`` raw bytes when the header carries ``"size"``: object contents, manifests
and log bytes travel as such framed binary, never inside JSON. Requests carry ``v`` (the
protocol version), ``id`` (echoed in the reply), ``op`` and ``args``. A reply is
``{"id", "ok": true, "result"}`` or ``{"id", "ok": false, "error": {"code", "message",
"hint"}}``: a failure is always a structured reply, never only a traceback on stderr.
Standard library only: this module runs on the hosts.

Operations (args -> result; HelperClient has a method for each):
  hello                      -> protocol, helper_version, bundle_sha256, python, root, host facts
  objects.missing  sha256[]  -> missing[]                 objects.put  sha256 + data -> stored
  trees.materialize image_id + manifest bytes -> tree, created
  trees.verify     image_id, mode (metadata|full) -> drift ContentResult fields
  trees.quarantine / trees.remove  image_id
  process.start    instance_id, argv, env, cwd -> pid, start_time, log, instance_dir, data_dir
  process.status   processes[{pid, start_time}] -> state (running|exiting|exited|gone), exit_code
  process.stop     processes[], timeout -> state, exit_code, how, stuck (all in one grace period)
  process.logs     instance_id, offset | tail, limit -> offset, next_offset, file_size + data
  process.inspect  pid, start_time, values_for[] -> state, argv, env (other values withheld)
  host.listeners   ports[]? -> listeners[{address, port, pids}]
  host.files       paths[] -> per path: type, sha256, size, mode
  host.free_port   address, avoid[]? -> port (free on address now, not one of avoid)
  drift.scan       mode, images[], processes[{instance_id, pid, start_time, values_for}], ports[], files[]
                   -> trees, processes (+ cwd, uid, user), listeners (owners: pid, pgrp, uid, argv),
                   files, instance_processes, uid, user: one host's drift facts in one round trip
  host.facts                 -> helper_version, bundle_sha256, python, root, host facts (as hello)
"""

from __future__ import annotations

import json
import re
from typing import Any, BinaryIO

PROTOCOL = 1
MAX_HEADER = 1 << 20
"""No header line is longer; a longer line means the stream is out of step."""
INLINE_LIMIT = 32 << 10
"""A message whose header line would be longer (10,000 shas, a large environment) and that
carries no data travels *framed*: a short header ``{"id", "framed": true, "size"}`` and the
message's JSON as its data. So no line exceeds the 64 KiB an asyncio StreamReader takes."""
MAX_FRAMED = 64 << 20
CHUNK = 1 << 20

SHA256 = re.compile(r"[0-9a-f]{64}\Z")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")

# Error codes: what the controller can act on without parsing messages.
BAD_REQUEST = "bad_request"
PROTOCOL_MISMATCH = "protocol"
UNKNOWN_OP = "unknown_op"
NOT_FOUND = "not_found"
HASH_MISMATCH = "hash_mismatch"
DISK_FULL = "disk_full"
MISSING_OBJECTS = "missing_objects"
CORRUPTED = "corrupted"
START_FAILED = "start_failed"
NOT_ALLOWED = "not_allowed"
STILL_RUNNING = "still_running"
IO_ERROR = "io_error"
INTERNAL = "internal"


class ProtocolError(Exception):
    """The peer sent something that is not a frame; the stream cannot be trusted after it."""


class OpError(Exception):
    """A request that failed: becomes an error reply (the helper goes on serving)."""

    def __init__(self, code: str, message: str, hint: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        if self.details:
            out["details"] = self.details
        return out


def encode_header(header: dict[str, Any]) -> bytes:
    return json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"


def decode_header(line: bytes) -> dict[str, Any]:
    """A header line as a dict; ProtocolError for anything else (including a bad ``size``)."""
    if not line.endswith(b"\n"):
        raise ProtocolError("the stream ended in the middle of a header")
    try:
        header = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"a header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("a header is not a JSON object")
    size = header.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ProtocolError(f"bad frame size {size!r}")
    return header


def read_header(stream: BinaryIO) -> dict[str, Any] | None:
    """The next header from a blocking stream, or None at a clean end of stream."""
    line = stream.readline(MAX_HEADER + 1)
    if not line:
        return None
    if len(line) > MAX_HEADER:
        raise ProtocolError(f"a header is longer than {MAX_HEADER} bytes")
    return decode_header(line)


def write_frame(stream: BinaryIO, header: dict[str, Any], data: bytes | None = None) -> None:
    if data is not None:
        header = {**header, "size": len(data)}
    stream.write(encode_header(header))
    if data:
        stream.write(data)
    stream.flush()


def pack(message: dict[str, Any], data: bytes | None) -> tuple[dict[str, Any], bytes | None]:
    """The frame that carries ``message`` (and its data): itself, or framed when it is long."""
    if data is None:
        line = encode_header(message)
        if len(line) > INLINE_LIMIT:
            return {"id": message.get("id"), "framed": True}, line
    return message, data


def unpack(header: dict[str, Any], data: bytes | None) -> tuple[dict[str, Any], bytes | None]:
    """The message a frame carries (see ``pack``)."""
    if not header.get("framed"):
        return header, data
    try:
        message = json.loads(data or b"")
    except ValueError as exc:
        raise ProtocolError(f"a framed message is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a framed message is not a JSON object")
    return message, None


def require(args: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """``args[key]`` checked to be of ``kind``; a bad_request OpError names the key otherwise."""
    if key not in args or args[key] is None:
        if default is ...:
            raise OpError(BAD_REQUEST, f"argument {key!r} is required")
        return default
    value = args[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, (int, float))):
        raise OpError(BAD_REQUEST, f"argument {key!r} has the wrong type ({type(value).__name__})")
    return value


def require_sha(value: Any, what: str = "sha256") -> str:
    if not isinstance(value, str) or not SHA256.match(value):
        raise OpError(BAD_REQUEST, f"{what} {value!r} is not 64 lowercase hex digits")
    return value


def require_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise OpError(BAD_REQUEST, f"{what} {value!r} must be 1-128 of A-Z a-z 0-9 . _ - (not starting with . _ -)")
    return value
