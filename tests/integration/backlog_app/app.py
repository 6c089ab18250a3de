"""A tiny HTTP/1.1 app with a small accept backlog (listen(8)), as real apps have.

Used by test_router_overload.py as the service's instances: every path answers 200 with
the release in X-Shop-Version after SERVICE_MS of simulated work; SIGTERM stops it."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket

VERSION = os.environ.get("APP_VERSION", "?").encode()
SERVICE_S = float(os.environ.get("SERVICE_MS", "2")) / 1000
BACKLOG = int(os.environ.get("BACKLOG", "8"))


class Http(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self.serve())

    async def serve(self) -> None:
        while b"\r\n\r\n" in self.buf and self.transport is not None and not self.transport.is_closing():
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if len(rest) < length:
                break
            self.buf = rest[length:]
            if SERVICE_S:
                await asyncio.sleep(SERVICE_S)
            body = b"version " + VERSION + b"\n"
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Shop-Version: " + VERSION
                                 + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        self.busy = False


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(BACKLOG)
    server = await loop.create_server(Http, sock=sock, backlog=BACKLOG)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    asyncio.run(main(p.parse_args().port))
