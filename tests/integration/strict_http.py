"""A strict RFC 9112 request parser, written for the tests and independent of the router's.

The router is built on httptools (llhttp); checking what it forwards with the same
parser would prove nothing. This one accepts only what RFC 9112 lets a message be
(CRLF line ends, no obs-fold, one Content-Length of digits, `chunked` as the only
transfer coding, Host exactly once in HTTP/1.1) and raises on anything else."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
REQUEST_LINE = re.compile(rb"(" + TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.([01])")
FIELD = re.compile(rb"(" + TOKEN + rb"):[ \t]*(.*?)[ \t]*")
VALUE_OK = re.compile(rb"[\x21-\x7e\x80-\xff]([\x20\x21-\x7e\x80-\xff\t]*[\x21-\x7e\x80-\xff])?|")
CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,15})((?:;" + TOKEN + rb"(?:=(?:" + TOKEN + rb"))?)*)")
MAX_HEAD = 1 << 20


class ParseError(Exception):
    """The bytes are not a valid HTTP/1.1 request stream."""


@dataclass
class Request:
    method: bytes
    target: bytes
    minor: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    chunked: bool = False
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def get(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name]

    @property
    def wants_close(self) -> bool:
        tokens = {t.strip().lower() for v in self.get(b"connection") for t in v.split(b",")}
        return b"close" in tokens or (self.minor == 0 and b"keep-alive" not in tokens)


class StrictParser:
    """Feed bytes, get the requests completed so far; ParseError at the first invalid byte."""

    def __init__(self) -> None:
        self.buf = b""
        self.failed: str | None = None

    def feed(self, data: bytes) -> list[Request]:
        if self.failed:
            raise ParseError(self.failed)
        self.buf += data
        out = []
        try:
            while True:
                req = self._one()
                if req is None:
                    return out
                out.append(req)
        except ParseError as e:
            self.failed = str(e)
            raise ParseError(f"{e} (after {len(out)} complete requests)") from None

    @classmethod
    def parse_all(cls, data: bytes) -> tuple[list[Request], str]:
        """Every complete request of a whole stream, and how the stream ends: "clean",
        "incomplete" (a request is cut short) or "error" (the next request is invalid)."""
        p = cls()
        p.buf = data
        out = []
        while True:
            try:
                req = p._one()
            except ParseError:
                return out, "error"
            if req is None:
                return out, "incomplete" if p.pending else "clean"
            out.append(req)

    @property
    def pending(self) -> bool:
        """Bytes of an unfinished request are buffered."""
        return bool(self.buf.lstrip(b"\r\n"))

    def _one(self) -> Request | None:
        buf = self.buf
        while buf.startswith(b"\r\n"):  # RFC 9112 2.2: empty lines before a request are ignored
            buf = buf[2:]
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                raise ParseError("head too long")
            self._check_partial(buf)
            return None
        lines = buf[:end].split(b"\r\n")
        for line in lines:
            if b"\r" in line or b"\n" in line:
                raise ParseError("bare CR or LF in the head")
        m = REQUEST_LINE.fullmatch(lines[0])
        if m is None:
            raise ParseError(f"bad request line {lines[0][:80]!r}")
        headers = self._fields(lines[1:])
        req = Request(m.group(1), m.group(2), int(m.group(3)), headers)
        rest = buf[end + 4:]
        hosts = req.get(b"host")
        if len(hosts) > 1 or (req.minor == 1 and not hosts):
            raise ParseError("Host missing or repeated")
        te, cl = req.get(b"transfer-encoding"), req.get(b"content-length")
        if te:
            if req.minor == 0 or cl:
                raise ParseError("Transfer-Encoding with HTTP/1.0 or with Content-Length")
            codings = [c.strip().lower() for v in te for c in v.split(b",")]
            if codings != [b"chunked"]:
                raise ParseError(f"unsupported transfer codings {codings}")
            parsed = self._chunked(rest)
            if parsed is None:
                return None
            req.body, req.trailers, rest = parsed
            req.chunked = True
        elif cl:
            if len(cl) > 1 or not cl[0].isdigit():
                raise ParseError(f"bad Content-Length {cl}")
            n = int(cl[0])
            if len(rest) < n:
                return None
            req.body, rest = rest[:n], rest[n:]
        self.buf = rest
        return req

    @staticmethod
    def _check_partial(buf: bytes) -> None:
        """Refuse a bare LF early so a broken head does not wait for more data."""
        i = buf.find(b"\n")
        while i >= 0:
            if i == 0 or buf[i - 1:i] != b"\r":
                raise ParseError("bare LF in the head")
            i = buf.find(b"\n", i + 1)

    @staticmethod
    def _fields(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
        out = []
        for line in lines:
            if line[:1] in (b" ", b"\t"):
                raise ParseError("obs-fold")
            m = FIELD.fullmatch(line)
            if m is None or VALUE_OK.fullmatch(m.group(2)) is None:
                raise ParseError(f"bad field line {line[:80]!r}")
            out.append((m.group(1), m.group(2)))
        return out

    def _chunked(self, data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes] | None:
        body, pos = [], 0
        while True:
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                if len(data) - pos > 1024:
                    raise ParseError("chunk size line too long")
                self._check_partial(data[pos:])
                return None
            m = CHUNK_LINE.fullmatch(data[pos:eol])
            if m is None:
                raise ParseError(f"bad chunk size line {data[pos:eol][:40]!r}")
            size = int(m.group(1), 16)
            pos = eol + 2
            if size == 0:
                break
            if len(data) < pos + size + 2:
                return None
            if data[pos + size:pos + size + 2] != b"\r\n":
                raise ParseError("chunk data not followed by CRLF")
            body.append(data[pos:pos + size])
            pos += size + 2
        end = data.find(b"\r\n\r\n", pos - 2)
        if end < 0:
            self._check_partial(data[pos:])
            return None
        lines = data[pos:end].split(b"\r\n") if end > pos - 2 and end >= pos else []
        trailers = self._fields([x for x in lines if x]) if lines else []
        return b"".join(body), trailers, data[end + 4:]
