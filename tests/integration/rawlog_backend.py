"""A backend for the router's hostile-input tests: it logs every request it receives, as
parsed by the strict parser of strict_http.py, and answers with the request's nonce.

Run as `python rawlog_backend.py PORT LOG`: one JSON line per parsed request
({"conn", "method", "target", "headers", "body"}, bytes as latin-1 text) or per parse
error ({"conn", "error"}), flushed before the response is sent. `/slow` answers after
2 s; `/conn-names-length` answers with `Connection: content-length`; `/trailer` answers with a
chunked body followed by trailer fields (Set-Cookie, X-Trailer). The nonce (header X-Nonce) comes back in the body and in X-Nonce, so a response
that reached the wrong client is seen."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys

from strict_http import ParseError, StrictParser

counter = itertools.count()


def main() -> None:
    port, log_path = int(sys.argv[1]), sys.argv[2]
    log = open(log_path, "a", buffering=1, encoding="utf-8")

    def write(obj: dict[str, object]) -> None:
        log.write(json.dumps(obj) + "\n")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = next(counter)
        parser = StrictParser()
        try:
            while data := await reader.read(65536):
                try:
                    requests = parser.feed(data)
                except ParseError as e:
                    write({"conn": conn, "error": str(e)})
                    break
                for r in requests:
                    write({"conn": conn, "method": r.method.decode("latin-1"), "target": r.target.decode("latin-1"),
                           "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in r.headers],
                           "body": r.body.decode("latin-1")})
                    if r.target == b"/slow":
                        await asyncio.sleep(2)
                    nonce = (r.get(b"x-nonce") or [b""])[0]
                    body = json.dumps({"nonce": nonce.decode("latin-1"), "conn": conn}).encode()
                    # /conn-names-length: a response whose Connection names its own framing
                    extra = b"Connection: content-length\r\n" if r.target == b"/conn-names-length" else b""
                    if r.target == b"/trailer":
                        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Nonce: %s\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n"
                                     b"Set-Cookie: session=leaked\r\nX-Trailer: 1\r\n\r\n" % (nonce, len(body), body))
                    else:
                        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Nonce: %s\r\n%s"
                                     b"Content-Length: %d\r\n\r\n%s" % (nonce, extra, len(body), body))
                    await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def run() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", port, reuse_address=True)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


if __name__ == "__main__":
    main()
