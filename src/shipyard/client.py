"""The CLI's way to the daemon: finds it through the state directory alone (api.json +
token) and speaks its HTTP API over a plain socket: `shipyard rollback` is the panic
button, and http.client alone costs more to import than the switch takes."""

from __future__ import annotations

import json
import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

from shipyard import errors
from shipyard.paths import StatePaths

KINDS: dict[str, type[errors.ShipyardError]] = {
    c.__name__: c for c in (errors.SpecError, errors.CertificateError, errors.ImageError, errors.ImageVerificationError,
                            errors.RuntimeFailure, errors.RouterError, errors.ConflictError,
                            errors.NotFoundError, errors.StoreUnavailable)
}


ACTOR_HEADER = "X-Shipyard-Actor"


def local_actor() -> str:
    """user@host, for the daemon's audit log (which adds the token that vouched for it)."""
    import getpass
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = f"uid{os.getuid()}"
    text = f"{user}@{socket.gethostname()}"
    return "".join(c for c in text if c.isprintable() and c.isascii())[:100]


class ApiClient:
    def __init__(self, paths: StatePaths, timeout: float = 600.0) -> None:
        self.paths = paths
        self.timeout = timeout
        self.actor = local_actor()
        self.reload()

    def reload(self) -> None:
        """Read the daemon's address and token again: a restarted daemon may listen elsewhere."""
        try:
            info = json.loads(self.paths.api.read_text())
            self.token = self.paths.token.read_text().strip()
            host, _, port = str(info["url"]).removeprefix("http://").rpartition(":")
            self.host, self.port = host.strip("[]") or "127.0.0.1", int(port)
        except (OSError, ValueError, KeyError, TypeError):
            raise errors.DaemonUnavailable(
                f"no shipyard daemon is running for {self.paths.root}",
                "start one with `shipyard serve` (same --state-dir / SHIPYARD_HOME)") from None

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        if not path.startswith("/") or not all("!" <= c <= "~" for c in path):
            # a space, CR/LF or non-ASCII letter would break the request line or inject headers:
            # callers percent-encode what they put in a path (shipyard.cli.common.segment)
            raise errors.SpecError(f"refusing to send a request for {path!r}: a URL path must be printable "
                                   "ASCII without spaces", "percent-encode names put in a path")
        data = json.dumps(body).encode() if body is not None else b""
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Authorization: Bearer {self.token}\r\n{ACTOR_HEADER}: {self.actor}\r\n"
                "Accept: application/json\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n")
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
                sock.sendall(head.encode() + data)
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
        except OSError as e:
            raise errors.DaemonUnavailable(
                f"the shipyard daemon for {self.paths.root} does not answer at {self.host}:{self.port} ({e})",
                "is `shipyard serve` still running? start it again if not") from None
        status, raw = _parse_response(b"".join(chunks))
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            if status < 400:      # a success cut short: the daemon went away while answering
                raise errors.DaemonUnavailable(f"the daemon's answer was cut short: {raw[:80]!r}") from None
            doc = {"error": raw.decode(errors="replace")[:500]}
        if status >= 400:
            cls = KINDS.get(doc.get("kind", ""), errors.ShipyardError)
            raise cls(doc.get("error") or f"daemon answered HTTP {status}", doc.get("hint"))
        return doc

    def get(self, path: str) -> dict[str, Any]:
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.request("POST", path, body or {})


def _parse_response(raw: bytes) -> tuple[int, bytes]:
    """Status and body of a whole HTTP/1.1 response read until the server closed."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise errors.DaemonUnavailable(f"the daemon sent a malformed answer: {raw[:80]!r}") from None
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        out, rest = [], body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out.append(rest[:size])
            rest = rest[size + 2:]
        body = b"".join(out)
    elif b"content-length" in headers:
        body = body[: int(headers[b"content-length"])]
    return status, body if sep else b""


class AsyncApiClient:
    """The same API from async code (demo, tests, benchmarks) that must not block its loop."""

    def __init__(self, paths: StatePaths, timeout: float = 600.0) -> None:
        import httpx
        sync = ApiClient(paths)
        # The daemon (uvicorn) closes a connection idle for 5 s, and httpx's default keep-alive
        # expiry is also 5 s: a request sent after ~5 s of quiet raced the server's close and
        # failed with a reset (a soak switching every 5 s hit it). Expire well before the server.
        self._http = httpx.AsyncClient(base_url=f"http://{sync.host}:{sync.port}", timeout=timeout,
                                       limits=httpx.Limits(keepalive_expiry=2.0),
                                       headers={"Authorization": f"Bearer {sync.token}",
                                                ACTOR_HEADER: sync.actor})

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        import httpx
        try:
            resp = await self._http.request(method, path, json=body)
        except httpx.HTTPError as e:
            raise errors.DaemonUnavailable(f"the shipyard daemon does not answer ({e})") from None
        doc = resp.json() if resp.content else {}
        if resp.status_code >= 400:
            cls = KINDS.get(doc.get("kind", ""), errors.ShipyardError)
            raise cls(doc.get("error") or f"daemon answered HTTP {resp.status_code}", doc.get("hint"))
        return doc

    async def get(self, path: str) -> dict[str, Any]:
        return await self.request("GET", path)

    async def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.request("POST", path, body or {})

    async def wait_rollout(self, rollout_id: str, timeout: float = 120.0) -> dict[str, Any]:
        import asyncio
        import time
        deadline = time.monotonic() + timeout
        while True:
            r = (await self.get(f"/v1/rollouts/{rollout_id}"))["rollout"]
            if r["phase"] in ("succeeded", "failed", "aborted"):
                return r
            if time.monotonic() > deadline:
                raise errors.ShipyardError(f"rollout {rollout_id} still {r['phase']} after {timeout:g}s")
            await asyncio.sleep(0.05)
