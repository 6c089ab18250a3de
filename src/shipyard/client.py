"""The CLI's way to the daemon: finds it through the state directory alone (api.json +
token) and speaks its HTTP API with the standard library, so a CLI call starts fast."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from typing import Any

from shipyard import errors
from shipyard.paths import StatePaths

KINDS: dict[str, type[errors.ShipyardError]] = {
    c.__name__: c for c in (errors.SpecError, errors.ImageError, errors.ImageVerificationError,
                            errors.RuntimeFailure, errors.RouterError, errors.ConflictError,
                            errors.NotFoundError)
}


class ApiClient:
    def __init__(self, paths: StatePaths, timeout: float = 600.0) -> None:
        self.paths = paths
        self.timeout = timeout
        try:
            info = json.loads(paths.api.read_text())
            self.token = paths.token.read_text().strip()
        except (OSError, ValueError):
            raise errors.DaemonUnavailable(
                f"no shipyard daemon is running for {paths.root}",
                "start one with `shipyard serve` (same --state-dir / SHIPYARD_HOME)") from None
        url = urllib.parse.urlsplit(info["url"])
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except OSError as e:
            raise errors.DaemonUnavailable(
                f"the shipyard daemon for {self.paths.root} does not answer at {self.host}:{self.port} ({e})",
                "is `shipyard serve` still running? start it again if not") from None
        finally:
            conn.close()
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = {"error": raw.decode(errors="replace")[:500]}
        if resp.status >= 400:
            cls = KINDS.get(doc.get("kind", ""), errors.ShipyardError)
            raise cls(doc.get("error") or f"daemon answered HTTP {resp.status}", doc.get("hint"))
        return doc

    def get(self, path: str) -> dict[str, Any]:
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.request("POST", path, body or {})


class AsyncApiClient:
    """The same API from async code (demo, tests, benchmarks) that must not block its loop."""

    def __init__(self, paths: StatePaths, timeout: float = 600.0) -> None:
        import httpx
        sync = ApiClient(paths)
        self._http = httpx.AsyncClient(base_url=f"http://{sync.host}:{sync.port}", timeout=timeout,
                                       headers={"Authorization": f"Bearer {sync.token}"})

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
