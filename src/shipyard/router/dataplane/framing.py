"""HTTP/1.1 framing at the proxy: which headers are hop-by-hop, and the request head as
the instance will see it.

The request head is rebuilt, never patched: the framing of what is forwarded
(Content-Length or `Transfer-Encoding: chunked`, and Host) is written by the router
from what the parser counted, so every RFC 9112 parser downstream reads the same
message boundaries the router used. Anything that would let two parsers disagree
is refused before a byte is forwarded (RFC 9110 7.6.1 lets a proxy refuse what it
cannot forward safely): a Connection header naming a framing header or Host,
several Host or Content-Length values, a transfer coding other than chunked,
CONNECT, and an Upgrade request with a body."""

from __future__ import annotations

from shipyard.router.table import PREVIEW_TOKEN_HEADER as _TOKEN
from shipyard.router.table import TRACK_HEADER as _TRACK

H_HOST, H_XFF, H_TE, H_CONN, H_DROP, H_TRACK, H_COOKIE, H_LEN, H_TOKEN = range(9)
HOP = {b"connection": H_CONN, b"keep-alive": H_DROP, b"te": H_DROP, b"trailer": H_DROP,
       b"upgrade": H_DROP, b"transfer-encoding": H_TE}
RESPONSE_HEADERS = {**HOP, b"content-length": H_LEN}
REQUEST_HEADERS = {**HOP, b"content-length": H_LEN, b"host": H_HOST, b"x-forwarded-for": H_XFF,
                   b"x-forwarded-proto": H_DROP, b"x-forwarded-host": H_DROP, b"cookie": H_COOKIE}
"""Request headers the router acts on; any other header is relayed as is (but see SHIPYARD_PREFIX)."""
SHIPYARD_PREFIX = b"x-shipyard-"
"""Every client header with this prefix is the router's to read and is never forwarded: an
instance must not be able to tell a forged preview request from a real one."""
TRACK_HEADER = _TRACK.encode()
PREVIEW_TOKEN_HEADER = _TOKEN.encode()
R_LENGTH, R_CHUNKED = 1, 2
"""A response head's framing as announced (bits): a Content-Length, a chunked Transfer-Encoding."""
NEVER_HOP = frozenset((b"content-length", b"transfer-encoding", b"host"))
"""Headers a Connection header may not name: removing them would change the message's framing."""
REASONS = {400: b"Bad Request", 405: b"Method Not Allowed", 431: b"Request Header Fields Too Large",
           502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout",
           505: b"HTTP Version Not Supported"}


class Refused(Exception):
    """A request the router will not forward: answered with `status` and closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


RequestHead = tuple[bytes, bool, "bytes | None", "bytes | None", "bytes | None"]
"""A parsed request rewritten for the instance: (head, chunked, override, token, cookies). A plain
tuple, not a class: it is made once per request and unpacked at once (a dataclass costs ~6x more)."""
_X, _P = ord("x"), ord("p")
_PROTO_HOST = {p: b"\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Host: " % p for p in (b"http", b"https")}


def connection_tokens(value: bytes, into: set[bytes] | None) -> set[bytes] | None:
    """Header names listed in Connection are hop-by-hop too (keep-alive/close are not names)."""
    for token in value.lower().split(b","):
        token = token.strip()
        if token and token not in (b"keep-alive", b"close"):
            into = into or set()
            into.add(token)
    return into


def without_fields(pieces: list[bytes], start: int, names: set[bytes]) -> list[bytes]:
    """`pieces` without the fields named in `names`; from `start` on, `pieces` holds fields
    as 4 pieces each (name, b": ", value, b"\\r\\n"), the way a head is built on the hot path:
    joined once, never formatted line by line."""
    out = pieces[:start]
    for i in range(start, len(pieces), 4):
        if pieces[i].lower() not in names:
            out += pieces[i:i + 4]
    return out


STATUS_LINES: dict[tuple[int, bytes], bytes] = {}
"""Status lines already formatted, by (status, reason): an instance answers with a few."""


def status_line(status: int, reason: bytes) -> bytes:
    line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
    if len(STATUS_LINES) < 256 and len(reason) <= 64:  # bounded: an instance may send any reason phrase
        STATUS_LINES[(status, reason)] = line
    return line


def error_response(status: int, message: str, connection: bytes, with_body: bool = True) -> bytes:
    body = b"shipyard: %s\n" % message.encode()
    return (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
            b"X-Shipyard-Error: 1\r\n%s\r\n%s") % (status, REASONS[status], len(body), connection,
                                                   body if with_body else b"")


def rewrite_request(method: bytes, url: bytes, http10: bool, upgrade: bool, hdrs: list[tuple[bytes, bytes]],
                    peer: bytes, listen: str, proto: bytes = b"http") -> RequestHead:
    """The head to send to the instance, or Refused. `upgrade` is the parser's verdict that the
    request asks to switch protocols (Upgrade + Connection: upgrade)."""
    if method == b"CONNECT":
        raise Refused(405, "CONNECT is not supported: this is a reverse proxy for one service, not a tunnel")
    out = [method, b" ", url, b" HTTP/1.1\r\n"]  # pieces, joined once (see without_fields)
    hosts = 0
    host = xff = override = token = cookies = length = None
    codings: list[bytes] | None = None
    drop: set[bytes] | None = None
    for name, value in hdrs:
        lname = name.lower()
        code = REQUEST_HEADERS.get(lname)
        if code is None:  # the prefixes are compared only when the first letter matches (no slice)
            first = lname[0] if lname else 0  # (llhttp refuses empty names)
            if first == _X and lname[:11] == SHIPYARD_PREFIX:
                if lname == TRACK_HEADER:
                    override = value
                elif lname == PREVIEW_TOKEN_HEADER:
                    token = value
                continue
            if first == _P and lname[:6] == b"proxy-":
                continue
        else:
            if code == H_HOST:
                hosts += 1
                host = value
            elif code == H_COOKIE:
                cookies = value if cookies is None else cookies + b"; " + value
            elif code == H_XFF:
                xff = value if xff is None else xff + b", " + value
                continue
            elif code == H_LEN:
                if length is not None:
                    raise Refused(400, "bad request (more than one Content-Length)")
                length = value.strip()
                continue
            elif code == H_TE:
                codings = (codings or []) + [c.strip().lower() for c in value.split(b",")]
                continue
            elif code == H_CONN:
                drop = connection_tokens(value, drop)
                continue
            else:
                continue
        out += (name, b": ", value, b"\r\n")
    if drop and drop & NEVER_HOP:
        named = ", ".join(sorted(n.decode("latin-1") for n in drop & NEVER_HOP))
        raise Refused(400, f"bad request (Connection names {named}, which cannot be removed as hop-by-hop)")
    if hosts > 1:
        raise Refused(400, "bad request (more than one Host header)")
    if hosts == 0 and not http10:
        raise Refused(400, "bad request (HTTP/1.1 requires a Host header)")
    chunked = False
    if codings is not None:
        if http10:
            raise Refused(400, "bad request (Transfer-Encoding in an HTTP/1.0 request)")
        if length is not None:
            raise Refused(400, "bad request (both Content-Length and Transfer-Encoding)")
        if codings != [b"chunked"]:
            raise Refused(400, "bad request (the only transfer coding accepted is chunked)")
        chunked = True
    if length is not None and not (length.isdigit() and len(length) <= 18):
        raise Refused(400, "bad request (invalid Content-Length)")
    if upgrade and (chunked or (length is not None and int(length) > 0)):
        # The parser stops at the end of the head of an Upgrade request; another parser may
        # read the body as part of this request or as the next one. Nothing is safe to forward.
        raise Refused(400, "bad request (an Upgrade request with a body; send the body without Upgrade)")
    if drop:
        out = without_fields(out, 4, drop)
    fwd = xff + b", " + peer if xff else peer
    if host is not None:
        out += (b"X-Forwarded-For: ", fwd, _PROTO_HOST.get(proto) or b"\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Host: "
                % proto, host)
    else:  # HTTP/1.0 clients may omit Host; HTTP/1.1 instances require one
        out += (b"X-Forwarded-For: ", fwd, b"\r\nX-Forwarded-Proto: ", proto, b"\r\nHost: ", listen.encode())
    if chunked:
        out.append(b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    elif length is not None:
        out.append(b"\r\nContent-Length: %d\r\n\r\n" % int(length))
    else:
        out.append(b"\r\n\r\n")
    return b"".join(out), chunked, override, token, cookies
