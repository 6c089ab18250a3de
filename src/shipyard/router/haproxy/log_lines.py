"""The line shipyard has HAProxy log for every request (LOG_FORMAT, START_RULE), and its parser.

The line carries only numbers and names shipyard chose (backend `<service>__<track>`,
server), never a header, a URL or other client text, so nothing a client sends can forge
or break a field. A line that is not exactly this (another format, a garbled or truncated
field) parses to None."""

from __future__ import annotations

import re

MARKER = "sy1"
"""First word of every shipyard log line (and its version): a foreign line is told apart."""

START_RULE = "http-request set-var(txn.sy_t0) date(0,us)"
"""Frontend rule that stamps the moment the request head was parsed, in microseconds: with
it a latency has microsecond resolution (HAProxy's timers count whole milliseconds). The
log line works without it (the field logs "-") and falls back to Ta - TR."""

LOG_FORMAT = f"{MARKER} %b %s %ST %TR %Ta %ts %B %[var(txn.sy_t0)] %[date(0,us)]"
"""The `log-format` of a frontend whose traffic shipyard judges. Latency is request head
received -> response sent, as the embedded router measures it (from parsing the head to
writing the response's last byte): %Ta runs from the first byte of the head to the last
byte of the body, so %Ta - %TR (the time the head took to arrive) is exactly that span;
%Tr stops at the response headers (it misses the body) and %Tt adds the connection's
handshake and keep-alive idle time. With START_RULE the same span is taken in
microseconds: date at log time minus the stamp. %ts tells HAProxy's own answers (503 no
server, 504 timeout) and responses cut short from the instance's; %B is bytes sent."""

_NAME = rb"[A-Za-z0-9_.:-]{1,127}"
_LINE = re.compile(
    rb"(%s) (<NOSRV>|%s) (-?\d{1,4}) (-?\d{1,10}) (\d{1,10}) ([A-Za-z-]{2}) (\d{1,19}) (-|\d{1,19}) (\d{1,19})\s*"
    % (_NAME, _NAME))
_MARK = MARKER.encode() + b" "
SERVICE_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?")
TRACK_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
SHARED_SITE = "listen-"
"""Name prefix of a frontend shared by Host (sites.shared_name): its own 404s are unknown hosts."""


def split_backend(backend: str) -> tuple[str, str] | None:
    """(service, track) of a backend named `<service>__<track>`, else None. Service names
    never hold an underscore, so the first `__` is the separator."""
    service, sep, track = backend.partition("__")
    if not sep or not SERVICE_RE.fullmatch(service) or not TRACK_RE.fullmatch(track):
        return None
    return service, track


class Record:
    """One parsed log line: what a response was and how long it took (ms). `head` is False
    when the request head never fully arrived (TR = -1): no request, nothing to count."""

    __slots__ = ("backend", "server", "status", "ms", "term", "bytes", "head")

    def __init__(self, backend: str, server: str, status: int, ms: float, term: str, nbytes: int,
                 head: bool = True) -> None:
        self.backend, self.server, self.status, self.ms, self.term, self.bytes, self.head = (
            backend, server, status, ms, term, nbytes, head)


def _match(data: bytes) -> re.Match[bytes] | None:
    """The fields after the marker: at the start (`format raw`) or after a syslog header,
    whose words (a host named like the marker) are skipped by trying each occurrence."""
    if data.startswith(_MARK):
        return _LINE.fullmatch(data, len(_MARK))
    at = data.find(b" " + _MARK)
    while at >= 0:
        m = _LINE.fullmatch(data, at + 1 + len(_MARK))
        if m is not None:
            return m
        at = data.find(b" " + _MARK, at + 1)
    return None


def parse(data: bytes) -> Record | None:
    """The Record of one datagram, or None when it is not a shipyard line (another
    format, a garbled or truncated field, text where a number belongs)."""
    m = _match(data)
    if m is None:
        return None
    backend, server, status, tr, ta, term, nbytes, t0, t1 = m.groups()
    head_ms = int(tr)
    if t0 != b"-" and int(t1) >= int(t0):
        ms = (int(t1) - int(t0)) / 1000.0
    else:
        ms = float(max(int(ta) - head_ms, 0))
    return Record(backend.decode(), server.decode(), int(status), ms, term.decode(), int(nbytes), head_ms >= 0)
