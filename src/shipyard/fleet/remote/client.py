"""The controller's side of the helper protocol, over any pair of asyncio byte streams: an SSH
channel's (asyncssh's SSHReader/SSHWriter of a process opened with ``encoding=None`` have the
same calls: readline, readexactly, write, drain, close) or a local subprocess's pipes.
The helper is run with ``bundle.launch_argv`` (no pty: a pty would kill what it starts).

Requests may be issued concurrently: each is written whole under a lock and its reply is
matched by id. A reply that is an error becomes a HelperError carrying the helper's code;
a stream that ends or goes out of step fails every pending call with HelperGone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from shipyard.drift.content import ContentResult
from shipyard.errors import ShipyardError

from .protocol import (
    CHUNK,
    DISK_FULL,
    MAX_HEADER,
    PROTOCOL,
    STILL_RUNNING,
    ProtocolError,
    decode_header,
    encode_header,
    pack,
    unpack,
)


class Reader(Protocol):
    async def readline(self) -> bytes: ...

    async def readexactly(self, n: int) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...


class HelperError(ShipyardError):
    """The helper refused or failed a request; ``code`` says which kind (protocol.py)."""

    def __init__(self, code: str, message: str, hint: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message, hint)
        self.code = code
        self.details = details or {}

    @property
    def disk_full(self) -> bool:
        return self.code == DISK_FULL


class HelperGone(HelperError):
    """The channel to the helper ended or can no longer be trusted: reconnect."""

    def __init__(self, why: str, hint: str | None = None) -> None:
        super().__init__("gone", f"lost the helper: {why}",
                         hint=hint or "the connection to the host dropped; reconnect to go on")


@dataclass(frozen=True)
class Started:
    pid: int
    start_time: int
    log: str
    instance_dir: str
    data_dir: str


@dataclass(frozen=True)
class ProcessState:
    pid: int
    start_time: int
    state: str
    """running | exiting | exited | gone (exited while no supervisor recorded it: code unknown)"""
    exit_code: int | None = None
    how: str | None = None
    """For a stop: SIGTERM, SIGKILL after the grace period, or "not running"."""
    stuck: bool = False
    """For a stop: still there after SIGKILL (uninterruptible I/O)."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProcessState:
        return cls(d["pid"], d["start_time"], d["state"], d.get("exit_code"), d.get("how"), bool(d.get("stuck")))


@dataclass(frozen=True)
class LogChunk:
    data: bytes
    offset: int
    next_offset: int
    file_size: int


class HelperClient:
    def __init__(self, reader: Reader, writer: Writer) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[tuple[dict[str, Any], bytes | None]]] = {}
        self._write_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._gone: HelperGone | None = None

    @property
    def gone(self) -> bool:
        """The channel ended or went out of step: every call fails; open a new helper."""
        return self._gone is not None

    # transport -----------------------------------------------------------------------------
    async def _read_replies(self) -> None:
        why, hint = "the helper closed the channel", None
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                if len(line) > MAX_HEADER:
                    raise ProtocolError("a reply header is too long")
                header = decode_header(line)
                data = await self._reader.readexactly(header["size"]) if header.get("size") else None
                header, data = unpack(header, data)
                fut = self._pending.pop(header.get("id"), None)   # type: ignore[arg-type]
                if fut is None:
                    err = header.get("error") or {}
                    why, hint = err.get("message") or "a reply to no request", err.get("hint")
                    if header.get("id") is None:
                        break
                    continue
                if not fut.done():
                    fut.set_result((header, data))
        except Exception as exc:   # incl. asyncssh's ConnectionLost/DisconnectError (not OSErrors)
            why = str(exc) or type(exc).__name__
        finally:   # whatever ends the reader (even a cancel) fails the calls waiting on it
            self._fail_all(HelperGone(why, hint))

    def _fail_all(self, exc: HelperGone) -> None:
        self._gone = exc
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()

    async def call(self, op: str, args: dict[str, Any] | None = None, data: bytes | None = None,
                   source: Path | None = None) -> tuple[Any, bytes | None]:
        """(result, reply data); the request carries ``data`` or the bytes of file ``source``."""
        if self._gone is not None:
            raise self._gone
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._read_replies())
        rid = next(self._ids)
        fut: asyncio.Future[tuple[dict[str, Any], bytes | None]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        header: dict[str, Any] = {"v": PROTOCOL, "id": rid, "op": op, "args": args or {}}
        try:
            async with self._write_lock:
                await self._send(header, data, source)
        except BaseException:
            self._pending.pop(rid, None)
            raise
        reply, body = await fut
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise HelperError(err.get("code", "unknown"), err.get("message", "the helper failed"),
                              err.get("hint"), err.get("details"))
        return reply.get("result"), body

    async def _send(self, header: dict[str, Any], data: bytes | None, source: Path | None) -> None:
        f = open(source, "rb") if source is not None else None   # an unreadable file: the stream is untouched
        try:
            if f is None:
                frame, data = pack(header, data)
                if data is not None:
                    frame = {**frame, "size": len(data)}
                self._writer.write(encode_header(frame) + (data or b""))
            else:
                size = os.fstat(f.fileno()).st_size
                header["size"] = size
                self._writer.write(encode_header(header))
                sent = 0
                try:
                    while sent < size:
                        chunk = f.read(min(CHUNK, size - sent))
                        if not chunk:   # the file shrank: the frame cannot be completed
                            raise ConnectionError(f"{source} shrank while it was being sent")
                        self._writer.write(chunk)
                        sent += len(chunk)
                        await self._writer.drain()
                except asyncio.CancelledError:   # half a frame went out: the stream is out of step
                    self.close()
                    self._fail_all(HelperGone(f"sending {source} was cancelled halfway"))
                    raise
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self.close()
            gone = HelperGone(str(exc) or type(exc).__name__)
            self._fail_all(gone)
            raise gone from exc
        finally:
            if f is not None:
                f.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()

    async def aclose(self) -> None:
        self.close()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)

    # operations ----------------------------------------------------------------------------
    async def hello(self) -> dict[str, Any]:
        result, _ = await self.call("hello")
        return result

    async def missing(self, shas: list[str]) -> list[str]:
        result, _ = await self.call("objects.missing", {"sha256": shas})
        return result["missing"]

    async def put(self, sha: str, content: bytes | Path) -> bool:
        """True when the host stored it, False when it already had it."""
        if isinstance(content, bytes):
            result, _ = await self.call("objects.put", {"sha256": sha}, data=content)
        else:
            result, _ = await self.call("objects.put", {"sha256": sha}, source=content)
        return result["stored"]

    async def materialize(self, image_id: str, manifest_bytes: bytes) -> dict[str, Any]:
        result, _ = await self.call("trees.materialize", {"image_id": image_id}, data=manifest_bytes)
        return result

    async def verify(self, image_id: str, mode: str = "metadata") -> ContentResult:
        result, _ = await self.call("trees.verify", {"image_id": image_id, "mode": mode})
        return ContentResult(**result)

    async def quarantine(self, image_id: str) -> str | None:
        result, _ = await self.call("trees.quarantine", {"image_id": image_id})
        return result["moved_to"]

    async def remove_tree(self, image_id: str) -> None:
        await self.call("trees.remove", {"image_id": image_id})

    async def start(self, instance_id: str, argv: list[str], env: dict[str, str], cwd: str) -> Started:
        result, _ = await self.call("process.start",
                                    {"instance_id": instance_id, "argv": argv, "env": env, "cwd": cwd})
        return Started(**result)

    async def status(self, processes: list[tuple[int, int]]) -> list[ProcessState]:
        result, _ = await self.call("process.status",
                                    {"processes": [{"pid": p, "start_time": s} for p, s in processes]})
        return [ProcessState.from_dict(d) for d in result["processes"]]

    async def running(self) -> list[dict[str, Any]]:
        """Every instance started on the host that still runs: instance_id, pid, start_time."""
        result, _ = await self.call("process.running", {})
        return list(result["processes"])

    async def stop_many(self, processes: list[tuple[int, int]], timeout: float = 10.0) -> list[ProcessState]:
        """All stopped at once (one grace period in all); those ``stuck`` after SIGKILL are flagged."""
        result, _ = await self.call("process.stop", {
            "processes": [{"pid": p, "start_time": s} for p, s in processes], "timeout": timeout})
        return [ProcessState.from_dict(d) for d in result["processes"]]

    async def stop(self, pid: int, start_time: int, timeout: float = 10.0) -> ProcessState:
        [state] = await self.stop_many([(pid, start_time)], timeout)
        if state.stuck:
            raise HelperError(STILL_RUNNING, f"process group {pid} is still running after SIGKILL",
                              hint="it may be stuck in uninterruptible I/O (state D in ps); check the host's disks")
        return state

    async def logs(self, instance_id: str, *, offset: int | None = None, tail: int | None = None,
                   limit: int = 1 << 20) -> LogChunk:
        args: dict[str, Any] = {"instance_id": instance_id, "limit": limit}
        if offset is not None:
            args["offset"] = offset
        if tail is not None:
            args["tail"] = tail
        result, data = await self.call("process.logs", args)
        return LogChunk(data or b"", result["offset"], result["next_offset"], result["file_size"])

    async def inspect(self, pid: int, start_time: int, values_for: list[str]) -> dict[str, Any]:
        """{"state": running | gone | recycled, "argv", "env"}: env values only for ``values_for``
        (others are "<withheld>"), ready for drift.processes.compare as a LiveProcess."""
        result, _ = await self.call("process.inspect",
                                    {"pid": pid, "start_time": start_time, "values_for": values_for})
        return result

    async def files(self, paths: list[str]) -> dict[str, dict[str, Any]]:
        """Per absolute path: {"type": file, "sha256", "size", "mode"} or {"type": missing | symlink |
        not a regular file | unreadable}."""
        result, _ = await self.call("host.files", {"paths": paths})
        return result["files"]

    async def free_port(self, address: str, avoid: list[int]) -> int:
        """A port free on the host's ``address`` now, none of ``avoid`` (handed out recently)."""
        result, _ = await self.call("host.free_port", {"address": address, "avoid": avoid})
        return int(result["port"])

    async def drift_scan(self, args: dict[str, Any]) -> dict[str, Any]:
        """One host's drift facts in one round trip (fleet/remote/drift_probe.py)."""
        result, _ = await self.call("drift.scan", args)
        return result

    async def facts(self) -> dict[str, Any]:
        """helper_version, bundle_sha256, python, root and ``host`` (hostname, boot_id, cpu_count,
        load, disk {path, total, free} under the helper root, memory {total, available})."""
        result, _ = await self.call("host.facts")
        return result

    async def listeners(self, ports: list[int] | None = None) -> dict[str, Any]:
        result, _ = await self.call("host.listeners", {} if ports is None else {"ports": ports})
        return result


async def spawn_local(argv: list[str], **kwargs: Any) -> tuple[HelperClient, asyncio.subprocess.Process]:
    """A helper run as a local subprocess (``bundle.launch_argv`` with a local path), e.g. in tests."""
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, **kwargs)
    assert proc.stdin is not None and proc.stdout is not None
    return HelperClient(proc.stdout, proc.stdin), proc
