"""A soak of a real daemon: paced load through the router, a traffic switch every few
seconds, and the daemon's and the router's RSS and open fds sampled from /proc, so a test
and a benchmark can say whether anything grows. Used by tests/integration/test_soak.py and
benchmarks/faults.py; the load is raw HTTP/1.1 on asyncio streams and keeps counts, not
samples, so the soak itself stays small over 30 minutes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.client import AsyncApiClient
from shipyard.errors import ShipyardError

IO_TIMEOUT = 8.0
"""Per connect and per response: generous for a loaded machine; slower counts as failed."""


# -- what /proc says about a process ---------------------------------------------------------

def rss_kib(pid: int) -> int:
    """VmRSS of `pid` in KiB (what the kernel counts as resident, shared pages included)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ShipyardError(f"process {pid} has no VmRSS (a zombie?)")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def router_pid(state_dir: Path, service: str = "shop") -> int | None:
    """The embedded router process serving `service` from `state_dir`, if one runs: the pid its
    `<service>.pid` names (one router may serve several services on one address, so its
    command line need not name the service), when that process is a router of this state dir."""
    want = str(state_dir).encode()
    try:
        pid = int(json.loads((state_dir / "router" / f"{service}.pid").read_text())["pid"])
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if b"shipyard.router.dataplane.proxy" in cmd and any(want in a for a in cmd):
        return pid
    return None


def slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, in value units per minute."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    if sxx == 0:
        return None
    return sum((t - mx) * (v - my) for t, v in points) / sxx * 60.0


@dataclass(frozen=True)
class Sample:
    t: float                  # seconds since the soak started
    daemon_rss_kib: int
    daemon_fds: int
    router_pid: int | None
    router_rss_kib: int | None
    router_fds: int | None


def sample(daemon_pid: int, state_dir: Path, t: float, service: str = "shop") -> Sample:
    rpid = router_pid(state_dir, service)
    r_rss = r_fds = None
    if rpid is not None:
        with contextlib.suppress(OSError, ShipyardError):
            r_rss, r_fds = rss_kib(rpid), open_fds(rpid)
    return Sample(t, rss_kib(daemon_pid), open_fds(daemon_pid), rpid, r_rss, r_fds)


# -- paced load -----------------------------------------------------------------------------

@dataclass
class PacedLoad:
    """`workers` clients each sending GET / every `pace` seconds, half on keep-alive
    connections and half on a new connection per request. A reused keep-alive connection
    that breaks before any answer is retried once on a new one, as HTTP clients do."""
    host: str
    port: int
    workers: int = 8
    pace: float = 0.05
    ok: int = 0
    failed: int = 0
    refused: int = 0
    failures: list[str] = field(default_factory=list)
    """The first few failures, for the message of a test that fails."""
    record: bool = False
    """Keep (sent, answered) of every success and (sent, failed) of every failure, for a
    timeline (a fault benchmark); off for a soak, whose memory must stay flat."""
    answered: list[tuple[float, float]] = field(default_factory=list)
    failed_at: list[tuple[float, float]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self._stop.clear()
        self._tasks = [asyncio.create_task(self._worker(i % 2 == 0)) for i in range(self.workers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def __aenter__(self) -> PacedLoad:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, close: bool) -> bool:
        conn = "close" if close else "keep-alive"
        writer.write(f"GET / HTTP/1.1\r\nHost: {self.host}\r\nConnection: {conn}\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT)
        lines = head.decode("latin-1").split("\r\n")
        length = next((int(v) for k, _, v in (ln.partition(":") for ln in lines[1:])
                       if k.strip().lower() == "content-length"), 0)
        await asyncio.wait_for(reader.readexactly(length), IO_TIMEOUT)
        return lines[0].split(" ")[1] == "200"

    async def _worker(self, keep_alive: bool) -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while not self._stop.is_set():
                start = time.monotonic()
                ok, why = await self._request(conn, keep_alive)
                conn = ok if isinstance(ok, tuple) else None
                if why:
                    self.failed += 1
                    if len(self.failures) < 20:
                        self.failures.append(why)
                    if self.record:
                        self.failed_at.append((start, time.monotonic()))
                else:
                    self.ok += 1
                    if self.record:
                        self.answered.append((start, time.monotonic()))
                if not keep_alive and conn is not None:
                    conn[1].close()
                    conn = None
                await asyncio.sleep(max(0.0, self.pace - (time.monotonic() - start)))
        finally:
            if conn is not None:
                conn[1].close()

    async def _request(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
                       keep_alive: bool) -> tuple[Any, str]:
        """(the connection to keep or None, "" on a 200 else why it failed)."""
        reused = conn is not None
        for _attempt in (1, 2):
            try:
                if conn is None:
                    try:
                        conn = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), IO_TIMEOUT)
                    except ConnectionRefusedError:
                        self.refused += 1
                        raise
                if await self._exchange(*conn, close=not keep_alive):
                    return conn, ""
                conn[1].close()
                return None, "status not 200"
            except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
                if conn is not None:
                    conn[1].close()
                conn = None
                if not reused or isinstance(e, ConnectionRefusedError):
                    return None, repr(e)
                reused = False
        return None, "retry failed"


# -- the soak -------------------------------------------------------------------------------

@dataclass
class SoakResult:
    seconds: float
    switches: int
    switch_failures: list[str]
    samples: list[Sample]
    load: PacedLoad

    def window(self, warmup: float) -> list[Sample]:
        return [s for s in self.samples if s.t >= warmup]

    def figures(self, warmup: float) -> dict[str, Any]:
        """Slopes (KiB/min, fds/min) and ranges after `warmup` seconds; RSS growth over the warm-up."""
        w = self.window(warmup)
        first = self.samples[0] if self.samples else None

        def rng(values: list[int | None]) -> int | None:
            vs = [v for v in values if v is not None]
            return max(vs) - min(vs) if vs else None

        return {
            "seconds": round(self.seconds, 1), "warmup_s": warmup, "samples": len(w),
            "switches": self.switches, "switch_failures": len(self.switch_failures),
            "requests_ok": self.load.ok, "requests_failed": self.load.failed, "refused": self.load.refused,
            "daemon_rss_start_kib": first.daemon_rss_kib if first else None,
            "daemon_rss_end_kib": self.samples[-1].daemon_rss_kib if self.samples else None,
            "daemon_rss_slope_kib_per_min": _round(slope_per_min([(s.t, s.daemon_rss_kib) for s in w])),
            "daemon_rss_range_kib": rng([s.daemon_rss_kib for s in w]),
            "daemon_fds_slope_per_min": _round(slope_per_min([(s.t, s.daemon_fds) for s in w])),
            "daemon_fds_range": rng([s.daemon_fds for s in w]),
            "router_rss_slope_kib_per_min": _round(slope_per_min(
                [(s.t, s.router_rss_kib) for s in w if s.router_rss_kib is not None])),
            "router_rss_range_kib": rng([s.router_rss_kib for s in w]),
            "router_fds_slope_per_min": _round(slope_per_min(
                [(s.t, s.router_fds) for s in w if s.router_fds is not None])),
            "router_fds_range": rng([s.router_fds for s in w]),
            "router_pids": sorted({s.router_pid for s in self.samples if s.router_pid is not None}),
        }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


Switcher = Callable[[int], Awaitable[None]]
"""Makes switch number n (0, 1, ...); raises ShipyardError when the switch failed."""


def alternating_switcher(api: AsyncApiClient, service: str, specs: list[Path]) -> Switcher:
    """Even switches roll back (the warm other slot takes the traffic), odd ones deploy the
    specs in turn; a deploy always starts fresh instances in the other slot (replacing the
    warm ones), so both kinds of rollout run, and instances come and go, for as long as the
    soak lasts."""
    async def switch(n: int) -> None:
        if n % 2 == 0:
            r = (await api.post(f"/v1/services/{service}/rollback"))["rollout"]
        else:
            spec = specs[(n // 2) % len(specs)]
            r = (await api.post("/v1/deploy", {"spec_path": str(spec)}))["rollout"]
        if r["phase"] not in ("succeeded",):
            r = await api.wait_rollout(r["id"], 60)
        if r["phase"] != "succeeded":
            raise ShipyardError(f"switch {n}: {r['kind']} {r['id']} ended {r['phase']}")
    return switch


async def soak(daemon_pid: int, state_dir: Path, load: PacedLoad, switch: Switcher, seconds: float,
               switch_every: float = 5.0, sample_every: float = 10.0,
               on_sample: Callable[[Sample], None] | None = None, service: str = "shop") -> SoakResult:
    """Run `load` for `seconds`, call `switch` every `switch_every` s (measured start to
    start, so a slow switch does not stretch the period), sample every `sample_every` s."""
    samples: list[Sample] = []
    failures: list[str] = []
    switches = 0
    t0 = time.monotonic()

    async def sampler() -> None:
        while True:
            s = sample(daemon_pid, state_dir, time.monotonic() - t0, service)
            samples.append(s)
            if on_sample is not None:
                on_sample(s)
            await asyncio.sleep(sample_every - (time.monotonic() - t0) % sample_every)

    async with load:
        task = asyncio.create_task(sampler())
        try:
            while (now := time.monotonic() - t0) < seconds:
                with contextlib.suppress(ShipyardError):
                    try:
                        await switch(switches)
                    except ShipyardError as e:
                        failures.append(e.message)
                        raise
                switches += 1
                await asyncio.sleep(max(0.0, min(seconds - (time.monotonic() - t0),
                                                 switch_every - (time.monotonic() - t0 - now))))
            samples.append(sample(daemon_pid, state_dir, time.monotonic() - t0, service))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return SoakResult(time.monotonic() - t0, switches, failures, samples, load)
