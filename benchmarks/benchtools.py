"""Pieces every benchmark script needs: child processes that are always stopped, a prober
that records which release answered each request, wrk and HAProxy runs with
machine-readable results, a description of the machine, the rewrite of one section of
docs/benchmarks.md, and traffic switches (CLI or API) with the time each took to settle.
Kept apart so that each script is only its figure."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shipyard.client import AsyncApiClient
from shipyard.devtools.daemonproc import cli_argv
from shipyard.errors import ShipyardError

WRK = "/usr/bin/wrk"
HAPROXY = "/usr/sbin/haproxy"

# wrk runs the script once per thread (its own Lua state) and once in the main state,
# where setup() sees each thread and done() sums what the threads counted.
_LUA_DONE = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) bad = 0 end
function done(summary, latency, requests)
  local non2xx = 0
  for _, t in ipairs(threads) do non2xx = non2xx + (t:get("bad") or 0) end
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,"connect":%.0f,'
    .. '"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f,"non2xx":%.0f,"p50_us":%.0f,'
    .. '"p90_us":%.0f,"p99_us":%.0f,"max_us":%.0f,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    non2xx, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
"""
# Only when asked: a response() hook makes wrk parse every response, which costs it CPU.
_LUA_COUNT = r"""
function response(status, headers, body)
  if status < 200 or status > 299 then bad = bad + 1 end
end
"""
# A paced load: wrk calls delay() after each response and waits that many milliseconds
# before the connection's next request, so the offered rate is at most connections/pause.
_LUA_PACE = """
function delay() return {ms} end
"""


class Children:
    """Every process a benchmark starts, each in its own session, so that stopping one
    stops its whole group and `stop_all` leaves nothing behind."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []

    async def spawn(self, argv: list[str], **kwargs: Any) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(*argv, start_new_session=True, **kwargs)
        self.procs.append(proc)
        return proc

    async def stop(self, proc: asyncio.subprocess.Process, timeout: float = 5.0) -> None:
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()

    async def stop_all(self) -> None:
        for proc in self.procs:
            await self.stop(proc)


def run_bounded(prefix: str, run: Callable[[Path, Children], Awaitable[dict[str, Any]]],
                cleanup: Callable[[], None] | None = None, failure: str = "benchmark failed") -> dict[str, Any] | int:
    """Run one benchmark in a fresh temp dir: the children it started (Children) and every process
    left under the dir are stopped, `cleanup` run (e.g. databases dropped) and the dir removed,
    also on Ctrl-C or a failure. Returns the results, or the exit code main() should return
    (130 interrupted, 1 failed, said on stderr after `failure`)."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    children = Children()

    async def main_async() -> dict[str, Any]:
        try:
            return await run(workdir, children)
        finally:
            await children.stop_all()

    try:
        return asyncio.run(main_async())
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except ShipyardError as e:
        print(f"{failure}: {e.message}" + (f"\n  {e.hint}" if e.hint else ""), file=sys.stderr)
        return 1
    finally:
        kill_everything_under(workdir)
        try:
            if cleanup is not None:
                cleanup()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def publish(res: dict[str, Any], out: Path, body: str, doc: Path, section: str | None) -> None:
    """The results as JSON in `out`, the doc table printed (the JSON's path on stderr), and the
    table written into `section` of `doc` when one is given (not for smoke runs)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(body)
    print(f"\nJSON: {out}", file=sys.stderr)
    if section is not None:
        write_doc_section(doc, section, body=body)


def tools_missing(*tools: str) -> bool:
    """True (said on stderr) when a program the benchmark runs is not installed."""
    missing = [t for t in tools if not os.access(t, os.X_OK)]
    for tool in missing:
        print(f"benchmark needs {tool}: run tools/system-deps.sh", file=sys.stderr)
    return bool(missing)


def loadavg_now() -> str:
    """The 1, 5 and 15 minute load averages, as the results record them ("2.1 / 1.9 / 1.7")."""
    return " / ".join(Path("/proc/loadavg").read_text().split()[:3])


def kill_everything_under(root: Path, timeout: float = 5.0) -> list[int]:
    """Last resort after a crash: SIGKILL the process group of anything whose command line
    names `root` or whose working directory is inside it (daemon, router, instances)."""
    root_s = str(root.resolve())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if root_s in cmd or cwd == root_s or cwd.startswith(root_s + "/"):
            found.append(int(entry))
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in found):
        time.sleep(0.05)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass(frozen=True)
class Probe:
    sent: float             # time.monotonic() just before the request was written
    done: float
    status: int             # 0: no response (connection error, timeout, bad response)
    version: str | None     # the answer's version header


class Prober:
    """Which release answered each request, by send time: a few keep-alive connections
    sending GET / (back to back unless `pause`). Raw HTTP/1.1 on asyncio streams rather than
    httpx: cheaper per request, so send times are dense and precise."""

    def __init__(self, host: str, port: int, connections: int = 4, version_header: str = "x-shop-version",
                 pause: float = 0.0) -> None:
        self.host, self.port, self.connections, self.pause = host, port, connections, pause
        self.version_header = version_header.lower()
        self.probes: list[Probe] = []
        self.errors: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.started = self.stopped = 0.0

    def start(self) -> None:
        self.started = time.monotonic()
        self._tasks = [asyncio.create_task(self._connection()) for _ in range(self.connections)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.stopped = time.monotonic()

    def rate(self) -> float:
        """Requests per second it sent while it ran (part of the load it measures)."""
        secs = (self.stopped or time.monotonic()) - self.started
        return len(self.probes) / secs if self.started and secs > 0 else 0.0

    async def _connection(self) -> None:
        request = f"GET / HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUser-Agent: sybench\r\n\r\n".encode()
        while not self._stop.is_set():
            writer = None
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
                while not self._stop.is_set():
                    sent = time.monotonic()
                    writer.write(request)
                    async with asyncio.timeout(5.0):
                        status, version, close = await read_response(reader, self.version_header)
                    self.probes.append(Probe(sent, time.monotonic(), status, version))
                    if close:
                        break
                    if self.pause:
                        await asyncio.sleep(self.pause)
            except (OSError, EOFError, TimeoutError, ValueError, asyncio.IncompleteReadError) as e:
                self.probes.append(Probe(time.monotonic(), time.monotonic(), 0, None))
                self.errors.append(f"{type(e).__name__}: {e}")
                await asyncio.sleep(0.01)
            finally:
                if writer is not None:
                    writer.close()

    def failures(self) -> int:
        return sum(1 for p in self.probes if not 200 <= p.status < 300)


async def read_response(reader: asyncio.StreamReader, version_header: str) -> tuple[int, str | None, bool]:
    """(status, version header, server will close) of one response; its body is read and dropped."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")   # no trailers expected: the empty line after the last chunk
    else:
        await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get(version_header), headers.get("connection", "").lower() == "close"


async def run_wrk(children: Children, workdir: Path, url: str, seconds: int, connections: int,
                  threads: int = 2, count_non2xx: bool = False,
                  until: asyncio.Event | None = None, pace_ms: int = 0) -> dict[str, Any]:
    """One wrk run; its figures as a dict (latencies in µs, rps). non2xx is -1 unless counted.
    With `until`, `seconds` is a cap: setting the event ends the run early (wrk stops on
    SIGINT and still reports), for a load that must last as long as something else.
    With `pace_ms`, each connection pauses that long between a response and its next request
    (offered_rps is then the ceiling connections/pause); without, it is unpaced (None)."""
    script = workdir / f"wrk-{'count' if count_non2xx else 'plain'}-{pace_ms}ms.lua"
    script.write_text(_LUA_DONE + (_LUA_COUNT if count_non2xx else "")
                      + (_LUA_PACE.format(ms=pace_ms) if pace_ms > 0 else ""))
    argv = [WRK, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url]
    proc = await children.spawn(argv, cwd=workdir, stdout=asyncio.subprocess.PIPE,
                                stderr=asyncio.subprocess.STDOUT)
    talk = asyncio.ensure_future(proc.communicate())
    stopper = asyncio.ensure_future(until.wait() if until else asyncio.sleep(seconds + 30))
    try:
        await asyncio.wait({talk, stopper}, timeout=seconds + 30, return_when=asyncio.FIRST_COMPLETED)
        if until is not None and until.is_set() and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
        out, _ = await asyncio.wait_for(talk, 30)
    finally:
        stopper.cancel()
        talk.cancel()
        await children.stop(proc)
    text = out.decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise ShipyardError(f"wrk against {url} failed (exit {proc.returncode}):\n{text[-2000:]}",
                            f"is {WRK} installed and the target listening?")
    res: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
    if not count_non2xx:
        res["non2xx"] = -1
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
    res["pace_ms"] = pace_ms
    res["offered_rps"] = connections * 1000 / pace_ms if pace_ms > 0 else None
    res["command"] = " ".join(argv[:-3] + [url])
    if until is not None:
        res["stopped_by_caller"] = True   # -d is only a cap; duration_us is how long it ran
    return res


async def start_haproxy(children: Children, workdir: Path, port: int, backends: list[str],
                        threads: int = 1) -> asyncio.subprocess.Process:
    """HAProxy in the foreground, keep-alive on both sides, round robin over `backends`."""
    cfg = workdir / "haproxy.cfg"
    servers = "\n".join(f"    server s{i} {b}" for i, b in enumerate(backends))
    cfg.write_text(f"""global
    nbthread {threads}
    maxconn 4000
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
frontend bench
    bind 127.0.0.1:{port}
    default_backend app
backend app
    balance roundrobin
{servers}
""")
    with open(workdir / "haproxy.log", "wb") as log:
        return await children.spawn([HAPROXY, "-f", str(cfg), "-db"], cwd=workdir, stdout=log,
                                    stderr=asyncio.subprocess.STDOUT)


async def wait_port(host: str, port: int, proc: asyncio.subprocess.Process, timeout: float = 5.0,
                    log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.returncode is not None:
            tail = log.read_text(errors="replace")[-1500:] if log and log.exists() else ""
            raise ShipyardError(f"a benchmark helper exited with code {proc.returncode} before listening on "
                                f"{port}" + (f":\n{tail}" if tail else ""))
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        if time.monotonic() > deadline:
            raise ShipyardError(f"nothing listens on {host}:{port} after {timeout:g}s")
        await asyncio.sleep(0.05)


def machine() -> dict[str, Any]:
    """What the figures depend on, recorded next to them."""
    model = ""
    with contextlib.suppress(OSError):
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        model = m.group(1).strip() if m else ""
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_model": model or platform.processor() or "unknown",
            "python": platform.python_version(), "kernel": platform.release(),
            "wrk": _version([WRK, "--version"]), "haproxy": _version([HAPROXY, "-v"]),
            "cpu_probe_ms": cpu_probe_ms()}


def cpu_probe_ms() -> float:
    """Best of 3 of a fixed pure-Python loop: on a shared VM the same CPU model runs two to
    three times slower at some hours, so runs are only comparable next to this figure."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        total = 0
        for i in range(3_000_000):
            total += i
        best = min(best, time.perf_counter() - t0)
    return round(best * 1000, 1)


def cpu_times() -> list[int]:
    """All CPUs' time so far, in ticks: user nice system idle iowait irq softirq steal."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def cpu_use(before: list[int], after: list[int]) -> dict[str, float]:
    """Share of the machine's CPU time that was busy (and stolen by the hypervisor) between
    two cpu_times(): says whether a load left the machine headroom."""
    d = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(d) or 1
    return {"busy": (total - d[3] - d[4]) / total, "steal": d[7] / total}


def _version(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0] if first else None


def write_doc_section(doc: Path, name: str, body: str) -> None:
    """Replace what lies between <!-- name:begin --> and <!-- name:end --> (appended if absent)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + f"\n\n## {name}\n\n{block}\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


# -- traffic switches ------------------------------------------------------------------------

@dataclass
class Switch:
    """One traffic switch, timed from the command's start; the settle fields come from the
    prober's record of who answered (measure_settle)."""
    method: str                      # "cli" | "api"
    target: str                      # the version that must serve afterwards
    t_cmd: float                     # monotonic, just before the CLI process / API request started
    t_done: float = 0.0              # when the CLI process exited / the API call returned
    ok: bool = False
    detail: str = ""
    settle_ms: float | None = None   # t_cmd -> send time of the first target answer after the last old one
    last_old_ms: float | None = None  # t_cmd -> send time of the last answer by the old release
    probes: int = 0                  # prober answers sent in this switch's window
    push_ms: float | None = None     # the daemon's table push for it (its traffic.switched event)

    @property
    def wall_ms(self) -> float:
        return (self.t_done - self.t_cmd) * 1000


async def switch_cli(children: Children, state: Path, service: str, target: str) -> Switch:
    """`shipyard rollback <service>` as a real process (the user's path, start-up included)."""
    env = {**os.environ, "SHIPYARD_HOME": str(state)}
    sw = Switch("cli", target, time.monotonic())
    proc = await children.spawn([*cli_argv(), "rollback", service], env=env, cwd=state,
                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    sw.t_done = time.monotonic()
    sw.detail = out.decode(errors="replace").strip()
    sw.ok = proc.returncode == 0 and "succeeded" in sw.detail
    return sw


async def switch_api(api: AsyncApiClient, service: str, target: str) -> Switch:
    sw = Switch("api", target, time.monotonic())
    try:
        r = (await api.post(f"/v1/services/{service}/rollback"))["rollout"]
        sw.ok, sw.detail = r["phase"] == "succeeded", f"{r['kind']} {r['id']}: {r['phase']}"
    except ShipyardError as e:
        sw.detail = e.message
    sw.t_done = time.monotonic()
    return sw


def measure_settle(sw: Switch, probes: list[Probe], until: float) -> None:
    """Fill in when, within [t_cmd, until), every request sent was answered by the target."""
    window = [p for p in probes if sw.t_cmd <= p.sent < until and p.status]
    sw.probes = len(window)
    last_old = max((p.sent for p in window if p.version != sw.target), default=None)
    after = [p.sent for p in window if p.version == sw.target and (last_old is None or p.sent > last_old)]
    sw.last_old_ms = (last_old - sw.t_cmd) * 1000 if last_old is not None else None
    sw.settle_ms = (min(after) - sw.t_cmd) * 1000 if after else None


def stats(values: list[float]) -> dict[str, float | None]:
    return {"p50": statistics.median(values) if values else None, "max": max(values) if values else None,
            "n": len(values)}


def series(switches: list[Switch]) -> dict[str, Any]:
    """p50/max of one series; a cycle counts when both its switches succeeded and settled."""
    good = [s for s in switches if s.ok and s.settle_ms is not None]
    cycles = sum(1 for i in range(0, len(switches) - 1, 2) if switches[i] in good and switches[i + 1] in good)
    return {"switches": len(switches), "settled": len(good), "cycles": cycles,
            "settle_ms": stats([s.settle_ms for s in good if s.settle_ms is not None]),
            "wall_ms": stats([s.wall_ms for s in switches]),
            "push_ms": stats([s.push_ms for s in switches if s.push_ms is not None]),
            "old_after_return": sum(1 for s in switches if s.last_old_ms is not None and s.last_old_ms > s.wall_ms)}


def switch_rows(switches: list[Switch]) -> list[dict[str, Any]]:
    return [{**{k: v for k, v in asdict(s).items() if k not in ("t_cmd", "t_done")}, "wall_ms": s.wall_ms}
            for s in switches]
