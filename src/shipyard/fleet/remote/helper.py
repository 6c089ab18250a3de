"""The helper's main loop: one request at a time from stdin, one reply each on stdout.

``python3 <bundle>.pyz [--root DIR]`` serves the protocol (protocol.py) until stdin ends;
``python3 <bundle>.pyz supervise`` is the per-instance supervisor (supervisor.py, started
by the bundle's ``__main__`` without importing the rest). State
lives under ``--root`` (default ``~/.shipyard``): ``images/`` (the image store, laid out as a
local one), ``instances/`` and ``exits/``. Requests are served in order; a long one (a stop
waiting for its grace period, a full re-hash) delays the next, so a controller that needs
both at once opens a second channel (each runs its own helper process).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import shipyard

from . import drift_probe, host
from .instances import Instances
from .protocol import (
    BAD_REQUEST,
    CHUNK,
    INTERNAL,
    MAX_FRAMED,
    PROTOCOL,
    PROTOCOL_MISMATCH,
    UNKNOWN_OP,
    OpError,
    ProtocolError,
    pack,
    read_header,
    unpack,
    write_frame,
)
from .store import HostStore


class Body:
    """The ``size`` bytes after a header: read at most once, the rest skipped by ``drain``."""

    def __init__(self, stream: BinaryIO, size: int) -> None:
        self.stream = stream
        self.size = size
        self.left = size

    def chunks(self) -> Iterator[bytes]:
        while self.left:
            chunk = self.stream.read(min(CHUNK, self.left))
            if not chunk:
                raise ProtocolError("the stream ended inside a frame's data")
            self.left -= len(chunk)
            yield chunk

    def read_all(self, limit: int) -> bytes:
        if self.size > limit:
            raise OpError(BAD_REQUEST, f"{self.size} bytes of data, more than the {limit} this request takes")
        return b"".join(self.chunks())

    def drain(self) -> None:
        for _ in self.chunks():
            pass


Handler = Callable[[dict[str, Any], Body], Any]


class Helper:
    def __init__(self, root: Path, bundle: str) -> None:
        self.root = root
        self.bundle = bundle
        self.store = HostStore(root / "images")
        self.instances = Instances(root, bundle)
        self.ops: dict[str, Handler] = {
            "hello": lambda a, b: self.hello(),
            "objects.missing": lambda a, b: self.store.missing(a),
            "objects.put": self.store.put,
            "trees.materialize": self.store.materialize,
            "trees.verify": lambda a, b: self.store.verify(a),
            "trees.quarantine": lambda a, b: self.store.quarantine(a),
            "trees.remove": lambda a, b: self.store.remove(a),
            "process.start": lambda a, b: self.instances.start(a),
            "process.status": lambda a, b: self.instances.status(a),
            "process.running": lambda a, b: self.instances.running(a),
            "process.stop": lambda a, b: self.instances.stop(a),
            "process.logs": lambda a, b: self.instances.logs(a),
            "process.inspect": lambda a, b: self.instances.inspect(a),
            "host.listeners": lambda a, b: host.listeners(a),
            "host.files": lambda a, b: host.files(a),
            "host.free_port": lambda a, b: host.free_port(a),
            "drift.scan": lambda a, b: drift_probe.scan(self.store, self.instances, a),
            "host.facts": lambda a, b: self.facts(),
        }

    def facts(self) -> dict[str, Any]:
        """What `shipyard hosts` shows, asked afresh on a helper that is already open."""
        hello = self.hello()
        return {k: hello[k] for k in ("helper_version", "bundle_sha256", "python", "root", "host")}

    def hello(self) -> dict[str, Any]:
        try:
            # an unpacked install is hashed through the zipapp it was made from, kept beside it
            path = self.bundle + ".pyz" if os.path.isdir(self.bundle) else self.bundle
            with open(path, "rb") as f:
                bundle_sha: str | None = hashlib.sha256(f.read()).hexdigest()
        except OSError:
            bundle_sha = None
        return {
            "protocol": PROTOCOL,
            "helper_version": shipyard.__version__,
            "bundle_sha256": bundle_sha,
            "python": ".".join(str(p) for p in sys.version_info[:3]),
            "root": str(self.root),
            "instances_root": str(self.instances.root),
            "host": host.facts(self.root),
        }

    def handle(self, header: dict[str, Any], body: Body) -> tuple[dict[str, Any], bytes | None]:
        rid = header.get("id")
        try:
            if header.get("v") != PROTOCOL:
                raise OpError(PROTOCOL_MISMATCH, f"the controller speaks protocol {header.get('v')!r}, this "
                              f"helper speaks {PROTOCOL}", hint="install the helper bundle of this shipyard version")
            op = header.get("op")
            handler = self.ops.get(op) if isinstance(op, str) else None
            if handler is None:
                raise OpError(UNKNOWN_OP, f"unknown operation {op!r}", hint="known: " + ", ".join(sorted(self.ops)))
            args = header.get("args") or {}
            if not isinstance(args, dict):
                raise OpError(BAD_REQUEST, "args must be a JSON object")
            result = handler(args, body)
        except OpError as exc:
            return {"id": rid, "ok": False, "error": exc.to_dict()}, None
        except ProtocolError:
            raise
        except Exception as exc:   # a bug: still a reply, with the traceback on stderr
            traceback.print_exc(file=sys.stderr)
            return {"id": rid, "ok": False, "error": {"code": INTERNAL, "message": f"{type(exc).__name__}: {exc}",
                                                      "hint": "a helper bug: see the helper's stderr"}}, None
        data = None
        if isinstance(result, tuple):
            result, data = result
        return {"id": rid, "ok": True, "result": result}, data

    def serve(self, stdin: BinaryIO, stdout: BinaryIO) -> int:
        while True:
            try:
                header = read_header(stdin)
                if header is None:
                    return 0
                body = Body(stdin, header.get("size") or 0)
                if header.get("framed"):
                    if body.size > MAX_FRAMED:
                        raise ProtocolError(f"a framed request of {body.size} bytes (at most {MAX_FRAMED})")
                    header, _ = unpack(header, body.read_all(MAX_FRAMED))
                    body = Body(stdin, 0)
                reply, data = self.handle(header, body)
                body.drain()
            except ProtocolError as exc:
                write_frame(stdout, {"id": None, "ok": False, "error": {
                    "code": PROTOCOL_MISMATCH, "message": f"the stream is out of step: {exc}",
                    "hint": "reconnect; the helper stops here"}})
                return 2
            write_frame(stdout, *pack(reply, data))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="shipyard-helper")
    parser.add_argument("--root", default="~/.shipyard", help="state directory (default ~/.shipyard)")
    root = Path(os.path.expanduser(parser.parse_args(args).root)).absolute()
    # A file size limit (RLIMIT_FSIZE) must fail the write (EFBIG), not kill the helper.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr   # a stray print must never corrupt the protocol
    root.mkdir(parents=True, exist_ok=True)
    try:
        return Helper(root, os.path.abspath(sys.argv[0])).serve(stdin, stdout)
    except BrokenPipeError:
        return 0   # the controller went away
