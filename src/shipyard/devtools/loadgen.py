"""Steady keep-alive traffic that records which release answered each request.

Used by the demo, the integration tests and the benchmarks to prove "no failed request"
and to time a switch: the moment after which every request is served by the target."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx


@dataclass(frozen=True)
class Sample:
    started: float        # time.monotonic() when the request was sent
    finished: float
    status: int           # 0 when the request failed without a response
    version: str | None   # the value of the version header, if any
    error: str | None = None
    user: int | None = None  # the user id sent, when the traffic comes from distinct users


@dataclass
class Traffic:
    url: str
    clients: int = 8
    pause: float = 0.01
    version_header: str = "x-shop-version"
    path: str = "/"
    users: int = 0
    """When > 0, each request comes from one of this many users (id in `user_header`)."""
    user_header: str = "x-user-id"
    seed: int = 1
    samples: list[Sample] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> Traffic:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def start(self) -> None:
        self._stop.clear()
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.clients)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _client(self, index: int) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        rnd = random.Random(self.seed * 1000 + index)
        async with httpx.AsyncClient(base_url=self.url, limits=limits, timeout=10.0) as c:
            while not self._stop.is_set():
                user = rnd.randrange(self.users) if self.users else None
                headers = {self.user_header: f"user-{user}"} if user is not None else None
                t0 = time.monotonic()
                try:
                    r = await c.get(self.path, headers=headers)
                    await r.aread()
                    self.samples.append(Sample(t0, time.monotonic(), r.status_code,
                                               r.headers.get(self.version_header), None, user))
                except httpx.HTTPError as e:
                    self.samples.append(Sample(t0, time.monotonic(), 0, None, f"{type(e).__name__}: {e}", user))
                if self.pause:
                    await asyncio.sleep(self.pause)

    # -- reading the record -------------------------------------------------------

    def failures(self, since: float = 0.0) -> list[Sample]:
        return [s for s in self.samples if s.started >= since and (s.status == 0 or s.status >= 500)]

    def versions(self, since: float = 0.0, until: float = float("inf")) -> Counter[str | None]:
        return Counter(s.version for s in self.samples if since <= s.started < until)

    def settled_at(self, version: str, since: float) -> float | None:
        """Seconds after `since` from which every request sent was answered by `version`."""
        later = sorted((s for s in self.samples if s.started >= since), key=lambda s: s.started)
        last_other = None
        for s in later:
            if s.version != version:
                last_other = s
        if not any(s.version == version for s in later):
            return None
        if last_other is None:
            return 0.0
        return max(0.0, last_other.started - since)
