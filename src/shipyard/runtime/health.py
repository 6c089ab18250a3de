"""Is an instance ready for traffic? HTTP health probes and the state they lead to.

A probe is one raw HTTP/1.1 GET on a fresh connection: no client library, no connection
pool, so a probe measures exactly "can a new client get an answer now". Readiness needs
several consecutive successes and loss of health several consecutive failures, so one
slow answer neither admits nor evicts an instance."""

from __future__ import annotations

import asyncio
import signal
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import httpx

from shipyard.httpcheck import CHECK_TIMEOUT, run_checks
from shipyard.launching import log_tail
from shipyard.rollout.records import Instance, ProbeResult
from shipyard.spec.strategy import PreviewCheck

__all__ = ["HealthTracker", "HttpHealthProbe", "ProbeResult", "probe", "wait_healthy"]

HealthState = Literal["starting", "healthy", "unhealthy"]

USER_AGENT = "shipyard-health"
_MAX_DRAIN = 64 * 1024


class _BadResponse(Exception):
    pass


async def probe(host: str, port: int, path: str, timeout: float) -> ProbeResult:
    """One GET; ok for a 2xx/3xx status. Never raises: failures are in `error`."""
    began = time.monotonic()
    status: int | None = None
    error: str | None = None
    try:
        status = await asyncio.wait_for(_get_status(host, port, path), timeout)
    except TimeoutError:
        error = f"timed out after {timeout:g}s"
    except ConnectionRefusedError:
        error = "connection refused"
    except _BadResponse as exc:
        error = str(exc)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        error = (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).lower()
    ok = status is not None and 200 <= status < 400
    return ProbeResult(ok=ok, status=status, error=error, seconds=time.monotonic() - began)


async def _get_status(host: str, port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {USER_AGENT}\r\n"
            "Accept: */*\r\nConnection: close\r\n\r\n".encode("latin-1")
        )
        await writer.drain()
        line = await reader.readline()
        if not line:
            raise _BadResponse("connection closed without a response")
        parts = line.split(None, 2)
        if (
            len(parts) < 2
            or not parts[0].startswith(b"HTTP/1.")
            or not (len(parts[1]) == 3 and parts[1].isdigit())
        ):
            raise _BadResponse(f"bad response: {line[:60].decode('latin-1').strip()!r}")
        status = int(parts[1])
        await _drain(reader)
        return status
    finally:
        writer.close()


async def _drain(reader: asyncio.StreamReader) -> None:
    """Read the rest of a small response, so closing does not reset the server's connection."""
    length = 0
    try:
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and value.strip().isdigit():
                length = int(value.strip())
        if 0 < length <= _MAX_DRAIN:
            await reader.readexactly(length)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        pass  # the status is what counts


class HealthTracker:
    """starting -> healthy after `healthy_threshold` consecutive successes;
    healthy -> unhealthy after `unhealthy_threshold` consecutive failures;
    unhealthy -> healthy after `healthy_threshold` consecutive successes again."""

    def __init__(self, healthy_threshold: int = 2, unhealthy_threshold: int = 3) -> None:
        if healthy_threshold < 1 or unhealthy_threshold < 1:
            raise ValueError("health thresholds must be at least 1")
        self.healthy_threshold = healthy_threshold
        self.unhealthy_threshold = unhealthy_threshold
        self.state: HealthState = "starting"
        self.successes = 0  # consecutive
        self.failures = 0  # consecutive

    def observe(self, ok: bool) -> HealthState:
        if ok:
            self.successes += 1
            self.failures = 0
            if self.state != "healthy" and self.successes >= self.healthy_threshold:
                self.state = "healthy"
        else:
            self.failures += 1
            self.successes = 0
            if self.state == "healthy" and self.failures >= self.unhealthy_threshold:
                self.state = "unhealthy"
        return self.state


async def wait_healthy(
    inst: Instance,
    *,
    path: str,
    interval: float,
    timeout: float,
    healthy_threshold: int,
    deadline_s: float,
    is_alive: Callable[[Instance], bool],
    exit_code: Callable[[Instance], int | None] | None = None,
    log_lines: int = 20,
    log_tail: Callable[[Instance, int], str] | None = None,
) -> tuple[bool, str]:
    """Probe every `interval` s until `healthy_threshold` successes in a row: (True, "").
    (False, why) when `deadline_s` passes or the process exits first; `why` is meant for
    the user: the last probe, or the exit code and the end of the instance log (read by
    `log_tail` when given: the log of an instance on another host is not a local file)."""
    tracker = HealthTracker(healthy_threshold, 1)
    began = time.monotonic()
    deadline = began + deadline_s
    next_probe = began
    while True:
        if not is_alive(inst):
            return False, _exited(inst, exit_code, log_lines, log_tail)
        probe_timeout = min(timeout, max(deadline - time.monotonic(), 0.05))
        last = await probe(inst.host, inst.port, path, probe_timeout)
        if tracker.observe(last.ok) == "healthy":
            return True, ""
        if not last.ok and not is_alive(inst):
            return False, _exited(inst, exit_code, log_lines, log_tail)
        now = time.monotonic()
        if now >= deadline:
            detail = last.describe(path)
            if last.ok:
                detail += f" ({tracker.successes} of {healthy_threshold} consecutive successes needed)"
            return False, f"not healthy after {deadline_s:g}s: last probe: {detail}"
        next_probe = max(next_probe + interval, now)  # an overrunning probe delays, never bursts
        await asyncio.sleep(min(next_probe, deadline) - now)


def _exited(inst: Instance, exit_code: Callable[[Instance], int | None] | None, log_lines: int,
            tail_of: Callable[[Instance, int], str] | None = None) -> str:
    code = exit_code(inst) if exit_code else None
    if code is None:
        how = "process exited"
    elif code < 0:
        how = f"process was killed by {_signal_name(-code)}"
    else:
        how = f"process exited (code {code})"
    tail = tail_of(inst, log_lines) if tail_of else log_tail(inst.log_path, log_lines)
    logs = "\n".join("  " + line for line in tail.splitlines()) if tail else "  (log is empty)"
    return f"{how} before becoming healthy; last log lines:\n{logs}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class HttpHealthProbe:
    """The HealthProbe port over real HTTP: what the daemon wires into the engine."""

    async def wait_healthy(self, inst: Instance, *, path: str, interval: float, timeout: float,
                           healthy_threshold: int, deadline_s: float, is_alive: Callable[[Instance], bool],
                           exit_code: Callable[[Instance], int | None] | None = None) -> tuple[bool, str]:
        return await wait_healthy(inst, path=path, interval=interval, timeout=timeout,
                                  healthy_threshold=healthy_threshold, deadline_s=deadline_s, is_alive=is_alive,
                                  exit_code=exit_code)

    async def check(self, inst: Instance, path: str, timeout: float) -> ProbeResult:
        return await probe(inst.host, inst.port, path, timeout)

    async def run_checks(self, base_url: str, checks: Sequence[PreviewCheck], *, label: str,
                         extra_headers: Mapping[str, str] | None = None,
                         log: Callable[[str], None] | None = None,
                         trust: ssl.SSLContext | None = None) -> str | None:
        async with httpx.AsyncClient(base_url=base_url, timeout=CHECK_TIMEOUT,
                                     verify=trust if trust is not None else True) as client:
            return await run_checks(client, checks, label=label, extra_headers=extra_headers, log=log)
