"""Taking an instance out of rotation when it fails, probing it, and taking it back.

An instance that refuses connections is ejected from round-robin and probed in the
background, so one dead instance costs one failed connect, not one per request.

A connect that times out, or a request left without an answer for per_try_timeout, is
weaker evidence: an instance whose accept backlog overflowed under load looks the same
for a moment. Such an ejection is "soft": its track may refuse it (panic threshold) and
route to the instance anyway, and a silent instance is re-admitted only once it answers
an HTTP request again (a stopped process still completes TCP handshakes into its backlog)."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable
from typing import Any

from shipyard.router.dataplane.metrics import UpstreamMetrics
from shipyard.router.table import Upstream

log = logging.getLogger("shipyard.router")

CONNECT_TIMEOUT = 2.0
PROBE_INTERVAL = 1.0
PROBE_REQUEST = b"OPTIONS * HTTP/1.1\r\nHost: shipyard-probe\r\nConnection: close\r\n\r\n"
"""Sent to an instance ejected for silence: any answer (even an error, even a close) shows it runs."""

# Why an instance is out of rotation ("" while it is in).
REFUSED, TIMEOUT, SILENT = "refused", "timeout", "silent"


class Ejection:
    """The ejection half of an instance's state (upstream.UpstreamState inherits it): the
    attributes below are that class's slots."""

    __slots__ = ()

    upstream: Upstream
    id: str
    metrics: UpstreamMetrics
    idle: list[Any]
    retired: bool
    probe: asyncio.Task[None] | None
    last_error: str
    ejected_for: str
    wake: Callable[[], None] | None

    @property
    def ejected(self) -> bool:
        return self.metrics.ejected

    @property
    def soft(self) -> bool:
        """Ejected on weak evidence (a timeout, a silence): its track may still route here."""
        return self.ejected_for in (TIMEOUT, SILENT)

    def connect_failed(self, error: BaseException, may_eject: bool = True) -> str:
        """Count the failure, eject the instance, start probing; returns a short reason. A
        timeout ejects only when `may_eject` (its track keeps enough instances); a refusal always."""
        reason = describe_connect_error(error)
        self.last_error = reason
        self.metrics.connect_failures += 1
        if isinstance(error, TimeoutError):
            if may_eject:
                self._eject(TIMEOUT, reason)
        else:
            self._eject(REFUSED, reason)
        return reason

    def went_silent(self, timeout: float, may_eject: bool) -> str:
        """A request got no response head within per_try_timeout; returns a short reason."""
        reason = f"no response within per_try_timeout {timeout:g}s"
        self.last_error = reason
        self.metrics.silent += 1
        if may_eject:
            self._eject(SILENT, reason)
        return reason

    def _eject(self, why: str, reason: str) -> None:
        if self.metrics.ejected:
            if why == REFUSED:
                self.ejected_for = REFUSED  # harder evidence wins: the panic threshold no longer applies
            return
        self.metrics.ejected = True
        self.ejected_for = why
        log.warning("ejected %s (%s:%d): %s", self.id, self.upstream.host, self.upstream.port, reason)
        for c in self.idle:
            c.close()
        self.idle.clear()
        if not self.retired:
            self.probe = asyncio.get_running_loop().create_task(self._probe())

    async def _probe(self) -> None:
        """Re-admit the instance as soon as a plain TCP connect succeeds again (after a silence:
        as soon as it answers an HTTP request)."""
        while self.metrics.ejected and not self.retired:
            await asyncio.sleep(PROBE_INTERVAL)
            if await self._alive(self.ejected_for == SILENT) and self.metrics.ejected:
                self._readmit()
        self.probe = None

    async def _alive(self, answer: bool) -> bool:
        host, port = self.upstream.host, self.upstream.port
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection(host, port)
                try:
                    if answer:
                        writer.write(PROBE_REQUEST)
                        await reader.read(1)  # bytes or EOF: either way the process runs
                finally:
                    writer.transport.abort()
        except (OSError, TimeoutError):
            return False
        return True

    def _readmit(self) -> None:
        self.metrics.ejected = False
        self.ejected_for = ""
        log.warning("re-admitted %s (%s:%d)", self.id, self.upstream.host, self.upstream.port)
        if self.wake is not None:
            self.wake()


def describe_connect_error(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return f"connect timed out after {CONNECT_TIMEOUT:g}s"
    if isinstance(error, ConnectionRefusedError) or getattr(error, "errno", None) == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__
