"""Pieces of the canary detection benchmark, kept apart so the script is only its figures:
a paced load of many distinct users that records who answered, a recorder of the router's
per-second series (embedded router or HAProxy), and the replay machinery that turns a few recorded minutes of an A/A
canary into hundreds of judged runs (ours, Flagger-style, fixed-horizon)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from benchtools import read_response
from scipy import stats

from shipyard import histogram
from shipyard.analysis import BatchMonitors, MonitorPlan, Second, Window, compare, fixed_horizon, flagger_rule
from shipyard.analysis import martingale as mg
from shipyard.errors import ShipyardError
from shipyard.router.control_client import RouterControlClient
from shipyard.router.haproxy.config import ring_name
from shipyard.router.haproxy.logs import TrafficLog

B = mg.B

# -- live: a paced load of many distinct users ------------------------------------------------


@dataclass(frozen=True)
class Hit:
    """One user request as the user saw it."""
    sent: float               # time.monotonic() just before the request was written
    done: float
    status: int               # 0: no response (connection error, timeout, bad response)
    version: str | None       # X-Shop-Version of the answer
    user: int
    late: float               # sent - scheduled: how far the load fell behind its pace


class UserLoad:
    """Open-loop traffic at a fixed pace (`rate` requests/s in all, one every 1/rate s), each
    request from a user drawn at random among `users` (sticky header `user-N`), sent over a
    pool of keep-alive connections. Open loop so a slow canary cannot slow the offered rate
    down; raw HTTP/1.1 on asyncio streams so the generator itself costs little CPU."""

    def __init__(self, host: str, port: int, rate: float, users: int, connections: int = 16, seed: int = 1,
                 header: str = "X-User-Id", version_header: str = "x-shop-version") -> None:
        self.host, self.port, self.rate, self.users = host, port, rate, users
        self.connections, self.header, self.version_header = connections, header, version_header
        self.rng = random.Random(seed)
        self.hits: list[Hit] = []
        self.errors: list[str] = []
        self._jobs: asyncio.Queue[tuple[float, int]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.started = self.stopped = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        self._tasks = [asyncio.create_task(self._pace())]
        self._tasks += [asyncio.create_task(self._connection()) for _ in range(self.connections)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self.stopped = time.monotonic()

    def achieved_rps(self) -> float:
        secs = (self.stopped or time.monotonic()) - self.started
        return len(self.hits) / secs if secs > 0 else 0.0

    async def _pace(self) -> None:
        t0, k = time.monotonic(), 0
        while True:
            k += 1
            at = t0 + k / self.rate
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            self._jobs.put_nowait((at, self.rng.randrange(self.users)))

    async def _connection(self) -> None:
        base = f"GET / HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUser-Agent: sybench\r\n{self.header}: user-"
        job: tuple[float, int] | None = None
        sent = 0.0
        while True:
            writer = None
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                while True:
                    job = job or await self._jobs.get()
                    sent = time.monotonic()
                    writer.write(f"{base}{job[1]}\r\n\r\n".encode())
                    async with asyncio.timeout(10.0):
                        status, version, close = await read_response(reader, self.version_header)
                    self.hits.append(Hit(sent, time.monotonic(), status, version, job[1], sent - job[0]))
                    job, sent = None, 0.0
                    if close:
                        break
            except (OSError, EOFError, TimeoutError, ValueError, asyncio.IncompleteReadError) as e:
                if job is not None:
                    self.hits.append(Hit(sent or time.monotonic(), time.monotonic(), 0, None, job[1], 0.0))
                    job = None
                self.errors.append(f"{type(e).__name__}: {e}")
                await asyncio.sleep(0.01)
            finally:
                if writer is not None:
                    writer.close()


# -- live: the router's per-second series ------------------------------------------------------

class SeriesRecorder:
    """Polls a router's `series` control op (completed seconds of every track) and keeps them
    all: the router itself keeps only the last 600 s."""

    def __init__(self, sock: Path, every: float = 5.0) -> None:
        self.sock, self.every = sock, every
        self.tracks: dict[str, dict[int, Second]] = {}
        self.now = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(ShipyardError, OSError):
            await self.poll()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(ShipyardError, OSError):
                await self.poll()
            await asyncio.sleep(self.every)

    async def poll(self) -> float:
        """Fetch what completed since the last poll; returns the router's clock."""
        doc = await RouterControlClient(self.sock).series(max(0.0, self.now - 2))
        for track, points in doc["series"].items():
            have = self.tracks.setdefault(track, {})
            for p in points:
                have[int(p["t"])] = Second.from_dict(p)
        self.now = doc["now"]
        return self.now

    def pairs(self, canary: str, stable: str, first: int, last: int) -> list[tuple[Second, Second]]:
        """(canary, stable) for every second first..last, idle seconds as zero."""
        c, s = self.tracks.get(canary, {}), self.tracks.get(stable, {})
        return [(c.get(t) or Second.empty(t), s.get(t) or Second.empty(t)) for t in range(first, last + 1)]


class RingRecorder(SeriesRecorder):
    """The same recorder on shipyard's HAProxy: a second reader of the service's log ring
    (`show events <ring> -w -n` on the admin socket, which streams every line appended from
    then on) fed to the daemon's own aggregation (logs.TrafficLog), so the seconds kept are
    built exactly as the ones the analysis judges, from the same lines (counted at their
    receipt here, a moment apart from the daemon's). Each HAProxy worker has its own ring: after
    a reload, `follow` attaches to the new worker (a connection to an old one stays on it)."""

    def __init__(self, admin_socket: Path, service: str, every: float = 5.0) -> None:
        super().__init__(admin_socket, every)
        self.service = service
        self.log = TrafficLog(service)
        self.attached = 0
        """Connections made to a worker's ring so far."""
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read())
        super().start()

    async def follow(self) -> None:
        """Read the ring of the worker that serves now; returns once attached (at most 5 s)."""
        await self._stop_reader()
        self._connected = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), 5.0)

    async def stop(self) -> None:
        await super().stop()
        await self._stop_reader()

    async def _stop_reader(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None

    async def _read(self) -> None:
        """Follow the ring; after a lost connection (its worker gone) follow it again."""
        while True:
            writer = None
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.sock), limit=1 << 20)
                writer.write(f"show events {ring_name(self.service)} -w -n\n".encode())
                await writer.drain()
                self.attached += 1
                self._connected.set()
                while line := await reader.readline():
                    self.log.feed(line.rstrip(b"\n"), time.time())
            except OSError:
                pass
            finally:
                if writer is not None:
                    writer.close()
            await asyncio.sleep(0.1)

    async def poll(self) -> float:
        doc = self.log.series(max(0.0, self.now - 2))
        for track, points in doc["series"].items():
            have = self.tracks.setdefault(track, {})
            for p in points:
                have[int(p["t"])] = Second.from_dict(p)
        self.now = doc["now"]
        return self.now


# -- replay: recorded seconds as arrays ---------------------------------------------------------

def dense(second: Second) -> np.ndarray:
    out = np.zeros(B, dtype=np.int64)
    for k, v in second.latency.items():
        out[k] = v
    return out


@dataclass(frozen=True)
class Trace:
    """N recorded seconds of both tracks: requests, errors, latency histograms (N, B)."""
    cr: np.ndarray
    ce: np.ndarray
    cl: np.ndarray
    sr: np.ndarray
    se: np.ndarray
    sl: np.ndarray

    @classmethod
    def of(cls, pairs: Sequence[tuple[Second, Second]]) -> Trace:
        def ints(xs: list[int]) -> np.ndarray:
            return np.array(xs, dtype=np.int64)
        return cls(ints([c.requests for c, _ in pairs]), ints([c.errors for c, _ in pairs]),
                   np.array([dense(c) for c, _ in pairs]).reshape(len(pairs), B),
                   ints([s.requests for _, s in pairs]), ints([s.errors for _, s in pairs]),
                   np.array([dense(s) for _, s in pairs]).reshape(len(pairs), B))

    def __len__(self) -> int:
        return len(self.cr)

    def describe(self) -> dict[str, Any]:
        """Per track: requests/s, error rate, p50/p90/p99 (bucket upper bounds) over the trace."""
        out: dict[str, Any] = {"seconds": len(self)}
        for name, r, e, lat in (("canary", self.cr, self.ce, self.cl), ("stable", self.sr, self.se, self.sl)):
            hist = {i: int(v) for i, v in enumerate(lat.sum(axis=0)) if v}
            out[name] = {"requests": int(r.sum()), "rps": float(r.mean()) if len(r) else 0.0,
                         "errors": int(e.sum()), "error_rate": float(e.sum() / r.sum()) if r.sum() else None,
                         **{f"p{q}_ms": histogram.quantile_ms(hist, q / 100) for q in (50, 90, 99)}}
        return out


Source = Callable[[int], mg.Tick]
"""Second s (0-based) of every run, as the arrays BatchMonitors reads."""


def bootstrap(rng: np.random.Generator, n: int, runs: int, seconds: int, block: int) -> np.ndarray:
    """Circular block bootstrap: each run is consecutive `block`-second stretches of the
    recording, each starting at a uniformly drawn second (wrapping at the end); (runs, seconds)."""
    blocks = -(-seconds // block)
    starts = rng.integers(0, n, size=(runs, blocks))
    idx = (starts[:, :, None] + np.arange(block)[None, None, :]) % n
    return idx.reshape(runs, blocks * block)[:, :seconds]


def plus_ms_map(plus_ms: float) -> np.ndarray:
    """(B, B) 0/1 matrix moving a request of bucket b to the bucket of (b's middle + plus_ms)."""
    m = np.zeros((B, B), dtype=np.int64)
    for b in range(B):
        m[b, histogram.bucket_of(compare.representative_ms(b) + plus_ms)] = 1
    return m


def replay(trace: Trace, idx: np.ndarray, rng: np.random.Generator, extra_errors: float = 0.0,
           plus_ms: float = 0.0, resplit: bool = False) -> Source:
    """Runs made of recorded seconds (idx from `bootstrap`). A bad canary is synthesised on the
    canary side only: every canary request that did not fail fails with probability
    `extra_errors`, and/or every canary request takes `plus_ms` longer. With `resplit`, each
    second's requests of both tracks are pooled and split again at random (see `_resplit`)."""
    cl = trace.cl @ plus_ms_map(plus_ms) if plus_ms else trace.cl

    def tick(s: int) -> mg.Tick:
        i = idx[:, s]
        cr, ce, lat, sr, se, slat = trace.cr[i], trace.ce[i], cl[i], trace.sr[i], trace.se[i], trace.sl[i]
        if resplit:
            ce, se, lat, slat = _resplit(rng, cr, sr, ce + se, lat + slat, lat.sum(axis=1))
        if extra_errors:
            ce = ce + rng.binomial(cr - ce, extra_errors)
        return mg.Tick(canary_requests=cr, canary_errors=ce, canary_latency=lat, stable_requests=sr,
                       stable_errors=se, stable_latency=slat)
    return tick


def _resplit(rng: np.random.Generator, cr: np.ndarray, sr: np.ndarray, errors: np.ndarray, pooled: np.ndarray,
             canary_timed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """An exact A/A from a recorded second: of the cr + sr pooled requests, the canary gets a
    uniformly random cr (its errors hypergeometric), and of the pooled latencies a uniformly
    random `canary_timed` (one hypergeometric draw per bucket). Each track keeps its request
    count; whatever differed between the tracks, by chance or not, is gone."""
    ce = rng.hypergeometric(errors, cr + sr - errors, cr)
    lat = np.zeros_like(pooled)
    left, rest = canary_timed.copy(), pooled.sum(axis=1)
    for b in np.flatnonzero(pooled.any(axis=0)):
        rest = rest - pooled[:, b]
        lat[:, b] = rng.hypergeometric(pooled[:, b], rest, left)
        left = left - lat[:, b]
    return ce, errors - ce, lat, pooled - lat


def lognormal_buckets(median_ms: float, sigma: float) -> np.ndarray:
    """Probability of each histogram bucket for a lognormal latency."""
    cdf = stats.lognorm.cdf(np.array(histogram.BOUNDS_MS), sigma, scale=median_ms)
    p = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    return np.clip(p, 0.0, None) / np.clip(p, 0.0, None).sum()


def synthetic(rng: np.random.Generator, runs: int, rate: float = 200.0, weight: float = 0.05,
              error_rate: float = 0.005, median_ms: float = 20.0, sigma: float = 0.5) -> Source:
    """Simulated A/A seconds (no recording): Poisson traffic split by weight, binomial errors,
    the same lognormal latency on both tracks (the setup of docs/analysis.md)."""
    p = lognormal_buckets(median_ms, sigma)

    def tick(_s: int) -> mg.Tick:
        cr, sr = rng.poisson(rate * weight, runs), rng.poisson(rate * (1 - weight), runs)
        return mg.Tick(canary_requests=cr, canary_errors=rng.binomial(cr, error_rate),
                       canary_latency=rng.multinomial(cr, p), stable_requests=sr,
                       stable_errors=rng.binomial(sr, error_rate), stable_latency=rng.multinomial(sr, p))
    return tick


# -- replay: judging every run three ways -------------------------------------------------------

@dataclass(frozen=True)
class Judged:
    """Per run, the second (0-based, from the canary's first second) at which each method
    failed the canary, or -1; plus how our monitors split the failures."""
    ours: np.ndarray
    ours_by_monitor: dict[str, int]
    flagger: np.ndarray
    fixed: np.ndarray
    fixed_margin: np.ndarray
    fixed_inconclusive: int


def judge(source: Source, runs: int, seconds: int, plans: Sequence[MonitorPlan], *, horizon: int = 300,
          interval: int = 60, threshold: int = 5, tolerance: float = 0.1, alpha: float = 0.05,
          min_requests: int = 50, margin_ms: float = 5.0) -> Judged:
    """Feed every second of every run to our sequential monitors (BatchMonitors, read after every
    second), and judge the same runs with `flagger_rule` (interval, threshold) and with the
    fixed-horizon comparison at `horizon` s: `fixed_horizon` as it is (no latency margin), and
    the same Fisher + Mann-Whitney tests with our monitors' latency margin as the floor of the
    Hodges-Lehmann shift."""
    monitors = BatchMonitors(runs, plans)
    n = np.zeros((seconds, runs), dtype=np.int64)
    x = np.zeros((seconds, runs), dtype=np.int64)
    sums = [np.zeros(runs, dtype=np.int64), np.zeros(runs, dtype=np.int64), np.zeros((runs, B), dtype=np.int64),
            np.zeros(runs, dtype=np.int64), np.zeros(runs, dtype=np.int64), np.zeros((runs, B), dtype=np.int64)]
    for s in range(seconds):
        tick = source(s)
        monitors.step(s, tick)
        n[s], x[s] = tick.canary_requests, tick.canary_errors
        if s < horizon:
            for acc, part in zip(sums, (tick.canary_requests, tick.canary_errors, tick.canary_latency,
                                        tick.stable_requests, tick.stable_errors, tick.stable_latency), strict=True):
                acc += part
    flagger = np.full(runs, -1, dtype=np.int64)
    fixed = np.full(runs, -1, dtype=np.int64)
    fixed_margin = np.full(runs, -1, dtype=np.int64)
    inconclusive = 0
    for r in range(runs):
        pairs = [(Second(s, int(n[s, r]), int(x[s, r])), Second.empty(s)) for s in range(seconds)]
        d = flagger_rule(pairs, interval=interval, threshold=threshold)
        if d.status == "failed" and d.t is not None:
            flagger[r] = d.t
        if seconds < horizon:
            continue
        canary = Window(int(sums[0][r]), int(sums[1][r]), _sparse(sums[2][r]), horizon)
        stable = Window(int(sums[3][r]), int(sums[4][r]), _sparse(sums[5][r]), horizon)
        # fixed_horizon reads only the sums over its horizon: one second holding them, and an
        # empty one at the horizon so that the series reaches it, is the same input
        whole = [(Second(0, canary.requests, canary.errors, canary.latency),
                  Second(0, stable.requests, stable.errors, stable.latency)),
                 (Second.empty(horizon - 1), Second.empty(horizon - 1))]
        d = fixed_horizon(whole, horizon=horizon, tolerance=tolerance, alpha=alpha, min_requests=min_requests)
        if d.status == "failed":
            fixed[r] = horizon - 1
        inconclusive += d.status == "inconclusive"
        level = alpha / 2
        verdicts = (compare.error_rate_vs_stable("fixed", canary, stable, tolerance, level, min_requests),
                    compare.latency_vs_stable("fixed", canary, stable, tolerance, level, min_requests, margin_ms))
        if any(v.status == "failed" for v in verdicts):
            fixed_margin[r] = horizon - 1
    by_monitor = {p.key: int((monitors.crossed_at[p.key] >= 0).sum()) for p in plans}
    return Judged(monitors.first_failure(), by_monitor, flagger, fixed, fixed_margin, inconclusive)


def _sparse(row: np.ndarray) -> dict[int, int]:
    return {int(i): int(row[i]) for i in np.flatnonzero(row)}


# -- figures ------------------------------------------------------------------------------------

def rate_ci(k: int, n: int) -> dict[str, Any]:
    """k of n with an exact (Clopper-Pearson) 95 % binomial confidence interval."""
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "ci95": [None, None]}
    ci = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    return {"k": k, "n": n, "rate": k / n, "ci95": [float(ci.low), float(ci.high)]}


def detection(first: np.ndarray) -> dict[str, Any]:
    """Runs failed, and the seconds of canary traffic until the failure (second t -> t + 1)."""
    hit = first[first >= 0] + 1
    out: dict[str, Any] = {"detected": int(hit.size), "runs": int(first.size)}
    if hit.size:
        out.update(median_s=float(np.median(hit)), p90_s=float(np.percentile(hit, 90)), max_s=float(hit.max()))
    return out


def fmt_s(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} s"


def med_max(xs: list[float | None]) -> dict[str, float | None]:
    vals = [x for x in xs if x is not None]
    return {"median": statistics.median(vals) if vals else None, "max": max(vals) if vals else None, "n": len(vals)}


def live_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"runs": len(runs), "aborted": sum(r["aborted"] for r in runs),
            **{k: med_max([r[k] for r in runs]) for k in
               ("detect_s", "v2_gone_s", "last_v2_after_abort_s", "deploy_to_first_v2_s", "failed_on_canary",
                "failed_users", "canary_requests", "canary_users")},
            "failed_on_canary_total": sum(r["failed_on_canary"] for r in runs),
            "failed_on_stable": sum(r["failed_on_stable"] for r in runs),
            "no_response": sum(r["no_response"] for r in runs),
            "v2_after_abort": sum(r["v2_after_abort"] for r in runs),
            "deciding_monitors": sorted({k for r in runs for k in r["deciding_monitors"]}),
            "latency_ms": {k: med_max([r["latency_ms"][k] for r in runs])["median"] for k in ("v1_p50", "v2_p50")},
            "achieved_rps": med_max([r["load"]["achieved_rps"] for r in runs])["median"],
            "users_seen": med_max([r["load"]["users"] for r in runs])["median"]}


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2g} %" if v < 0.1 else f"{100 * v:.1f} %"


def rate_cell(f: dict[str, Any]) -> str:
    lo, hi = f["ci95"]
    return f"{pct(f['rate'])} ({f['k']}/{f['n']}; 95 % CI {pct(lo)}-{pct(hi)})"


def detect_cell(d: dict[str, Any]) -> str:
    if not d["detected"]:
        return f"not detected (0/{d['runs']})"
    return f"{d['median_s']:.0f} s median, {d['max_s']:.0f} s max ({d['detected']}/{d['runs']} detected)"
