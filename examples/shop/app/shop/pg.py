"""A small asyncio PostgreSQL client: wire protocol v3, simple query protocol, standard library only,
so the shop's image still builds offline and runs on whatever python3 is on PATH.

The simple protocol carries values inside the SQL text, so every value that is not a constant of
the code goes through quote_literal (identifiers through quote_ident); results arrive as text."""

from __future__ import annotations

import asyncio
import base64
import getpass
import hashlib
import hmac
import os
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from urllib.parse import parse_qs, unquote, urlsplit

PROTOCOL_V3 = 196608
CANNOT_CONNECT = "08001"
CONNECTION_FAILURE = "08006"
PROTOCOL_VIOLATION = "08P01"
AUTH_FAILED = "28000"


class PgError(Exception):
    """An ErrorResponse from the server, or a connection that failed (SQLSTATE class 08)."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(f"{message} (SQLSTATE {sqlstate})")
        self.sqlstate = sqlstate
        self.message = message


@dataclass(frozen=True)
class ConnectParams:
    host: str
    port: int
    user: str
    password: str | None
    database: str
    timeout: float = 5.0
    settings: tuple[tuple[str, str], ...] = ()
    """Run-time parameters sent in the startup message (application_name, statement_timeout...)."""


def parse_url(url: str, settings: Mapping[str, str] | None = None,
              env: Mapping[str, str] = os.environ) -> ConnectParams:
    """postgresql://user[:password]@host[:port]/dbname[?host=/socket/dir&connect_timeout=s&options=..]."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("the database URL must look like postgresql://user@host:5432/dbname")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    if query.get("sslmode", "prefer") not in ("disable", "allow", "prefer"):
        raise ValueError("this client does not speak TLS: use sslmode=disable, or a server without TLS")
    user = unquote(parts.username) if parts.username else env.get("PGUSER") or getpass.getuser()
    startup = {"client_encoding": "UTF8", **(settings or {})}
    startup.update({key: query[key] for key in ("application_name", "options") if key in query})
    return ConnectParams(
        host=query.get("host") or unquote(parts.hostname or "") or "localhost",
        port=int(query.get("port") or parts.port or 5432),
        user=user,
        password=unquote(parts.password) if parts.password is not None else env.get("PGPASSWORD"),
        database=unquote(parts.path.lstrip("/")) or user,
        timeout=float(query.get("connect_timeout", 5)),
        settings=tuple(startup.items()),
    )


def quote_literal(value: object) -> str:
    """A value as an SQL literal. Backslashes use the E'' form, so the result means the same
    whatever standard_conforming_strings says."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        if isinstance(value, float | Decimal) and not value.is_finite():
            raise ValueError(f"{value} has no SQL literal here")
        text = str(value)
        return f"({text})" if text.startswith("-") else text
    if isinstance(value, str):
        if "\0" in value:
            raise ValueError("PostgreSQL text cannot hold NUL characters")
        quoted = "'" + value.replace("'", "''") + "'"
        return "E" + quoted.replace("\\", "\\\\") if "\\" in value else quoted
    raise TypeError(f"cannot quote a {type(value).__name__} as an SQL literal")


def quote_ident(name: str) -> str:
    if not name or "\0" in name:
        raise ValueError(f"{name!r} is not a usable SQL identifier")
    return '"' + name.replace('"', '""') + '"'


def md5_verifier(user: str, password: str) -> str:
    """What pg_authid holds for an md5 password."""
    return "md5" + hashlib.md5((password + user).encode()).hexdigest()


def md5_response(user: str, password: str, salt: bytes) -> bytes:
    return b"md5" + hashlib.md5(md5_verifier(user, password)[3:].encode() + salt).hexdigest().encode()


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def scram_keys(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """(StoredKey, ServerKey): what the server keeps in pg_authid for this password."""
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return hashlib.sha256(_hmac(salted, b"Client Key")).digest(), _hmac(salted, b"Server Key")


class Scram:
    """SCRAM-SHA-256 (RFC 5802, 7677) as PostgreSQL runs it: no channel binding, and an empty user
    name, because the server takes the user from the startup message. Passwords are used as given
    (no SASLprep), which is exact for ASCII passwords."""

    def __init__(self, password: str, nonce: str | None = None, user: str = "") -> None:
        self.password = password
        self.nonce = nonce or base64.b64encode(secrets.token_bytes(18)).decode()
        self.first_bare = f"n={user.replace('=', '=3D').replace(',', '=2C')},r={self.nonce}"
        self.server_signature = b""

    def first(self) -> bytes:
        return ("n,," + self.first_bare).encode()

    def final(self, server_first: bytes) -> bytes:
        attrs = _attributes(server_first)
        nonce = attrs.get("r", "")
        if not nonce.startswith(self.nonce) or nonce == self.nonce:
            raise PgError(PROTOCOL_VIOLATION, "SCRAM: the server's nonce does not extend ours")
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), base64.b64decode(attrs["s"]),
                                     int(attrs["i"]))
        client_key = _hmac(salted, b"Client Key")
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self.first_bare},{server_first.decode()},{without_proof}".encode()
        signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self.server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        """The server proves it knows the password too: no one in between faked the login."""
        attrs = _attributes(server_final)
        if not self.server_signature or not hmac.compare_digest(
                base64.b64decode(attrs.get("v", "")), self.server_signature):
            raise PgError(AUTH_FAILED, f"SCRAM: the server's signature does not match ({attrs.get('e', 'v')})")


def _attributes(message: bytes) -> dict[str, str]:
    return dict(item.split("=", 1) for item in message.decode().split(",") if "=" in item)


@dataclass
class Result:
    columns: list[str] = field(default_factory=list)
    rows: list[list[str | None]] = field(default_factory=list)
    command: str = ""
    """The command tag of the last statement, e.g. "INSERT 0 1"."""


class Connection:
    """One session. Queries run one at a time; a query cut off half-way (cancelled, broken
    socket) closes the connection, since its protocol state is then unknown."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self.parameters: dict[str, str] = {}
        self.in_transaction = False
        self.closed = False

    @classmethod
    async def open(cls, params: ConnectParams) -> Connection:
        socket_dir = params.host.startswith("/")
        where = f"{params.host}/.s.PGSQL.{params.port}" if socket_dir else f"{params.host}:{params.port}"
        try:
            opening = asyncio.open_unix_connection(where) if socket_dir else asyncio.open_connection(
                params.host, params.port)
            conn = cls(*await asyncio.wait_for(opening, params.timeout))
        except TimeoutError:
            raise PgError(CANNOT_CONNECT, f"cannot connect to {where}: timed out") from None
        except OSError as exc:
            raise PgError(CANNOT_CONNECT, f"cannot connect to {where}: {exc.strerror or exc}") from None
        try:
            await asyncio.wait_for(conn._startup(params), params.timeout)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, TimeoutError):
                raise PgError(CANNOT_CONNECT, f"no answer from {where} in {params.timeout:g}s") from None
            raise
        return conn

    async def _startup(self, params: ConnectParams) -> None:
        pairs = (("user", params.user), ("database", params.database), *params.settings)
        self._writer.write(_message(b"", struct.pack("!i", PROTOCOL_V3)
                                    + b"".join(_cstr(k) + _cstr(v) for k, v in pairs) + b"\0"))
        scram: Scram | None = None
        while True:
            kind, payload = await self._receive()
            if kind == b"E":
                raise _error(payload)
            if kind == b"S":
                self._parameter(payload)
            elif kind == b"Z":
                return
            elif kind == b"R":
                code = struct.unpack_from("!i", payload)[0]
                if code != 0 and params.password is None:
                    raise PgError(AUTH_FAILED, f"the server wants a password for {params.user!r}: "
                                  "put it in the URL or in PGPASSWORD")
                if code == 3:
                    self._writer.write(_message(b"p", _cstr(params.password or "")))
                elif code == 5:
                    self._writer.write(_message(b"p", md5_response(params.user, params.password or "",
                                                                   payload[4:8]) + b"\0"))
                elif code == 10:
                    if b"SCRAM-SHA-256" not in payload[4:].split(b"\0"):
                        raise PgError(AUTH_FAILED, "the server offers no SASL mechanism this client knows")
                    scram = Scram(params.password or "")
                    first = scram.first()
                    self._writer.write(_message(b"p", _cstr("SCRAM-SHA-256") + struct.pack("!i", len(first))
                                                + first))
                elif code == 11 and scram:
                    self._writer.write(_message(b"p", scram.final(payload[4:])))
                elif code == 12 and scram:
                    scram.verify(payload[4:])
                elif code != 0:
                    raise PgError(AUTH_FAILED, f"unsupported authentication request (code {code})")

    async def query(self, sql: str) -> Result:
        """Runs one simple query (it may hold several statements: the last result set is returned)."""
        if self.closed:
            raise PgError(CONNECTION_FAILURE, "the connection is closed")
        try:
            self._writer.write(_message(b"Q", _cstr(sql)))
            await self._writer.drain()
            result, error = Result(), None
            while True:
                kind, payload = await self._receive()
                if kind == b"T":
                    result = Result(columns=_column_names(payload))
                elif kind == b"D":
                    result.rows.append(_data_row(payload))
                elif kind == b"C":
                    result.command = payload.rstrip(b"\0").decode()
                elif kind == b"E":
                    error = error or _error(payload)  # keep reading: ReadyForQuery ends the exchange
                elif kind == b"S":
                    self._parameter(payload)
                elif kind == b"Z":
                    self.in_transaction = payload != b"I"
                    break
        except OSError as exc:
            self.close()
            raise PgError(CONNECTION_FAILURE, f"connection to the server lost: {exc.strerror or exc!r}") from None
        except BaseException:
            self.close()
            raise
        if error:
            raise error
        return result

    async def _receive(self) -> tuple[bytes, bytes]:
        try:
            head = await self._reader.readexactly(5)
            return head[:1], await self._reader.readexactly(struct.unpack_from("!i", head, 1)[0] - 4)
        except (OSError, asyncio.IncompleteReadError):
            self.close()
            raise PgError(CONNECTION_FAILURE, "the server closed the connection") from None

    def _parameter(self, payload: bytes) -> None:
        name, value = payload.split(b"\0")[:2]
        self.parameters[name.decode()] = value.decode()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if not self._writer.is_closing():
                self._writer.write(_message(b"X", b""))
                self._writer.close()


class Pool:
    """A few connections, opened when needed. A broken one is dropped; a query that finds its reused
    connection dead (server restart, terminated backend) runs once more on a fresh one."""

    def __init__(self, url: str, size: int = 4, settings: Mapping[str, str] | None = None) -> None:
        self.params = parse_url(url, settings)
        self._idle: list[Connection] = []
        self._slots = asyncio.Semaphore(size)

    async def query(self, sql: str) -> Result:
        async with self._slots:
            while self._idle:
                conn = self._idle.pop()
                if conn.closed:
                    continue
                try:
                    return await self._run(conn, sql)
                except PgError as exc:
                    if not exc.sqlstate.startswith("08"):
                        raise
            return await self._run(await Connection.open(self.params), sql)

    async def _run(self, conn: Connection, sql: str) -> Result:
        try:
            return await conn.query(sql)
        finally:
            if conn.closed or conn.in_transaction:
                conn.close()
            else:
                self._idle.append(conn)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def _message(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!i", len(payload) + 4) + payload


def _error(payload: bytes) -> PgError:
    fields = {chunk[:1]: chunk[1:].decode(errors="replace") for chunk in payload.split(b"\0") if chunk}
    return PgError(fields.get(b"C", "XX000"), fields.get(b"M", "unknown server error"))


def _column_names(payload: bytes) -> list[str]:
    count, offset, names = struct.unpack_from("!h", payload)[0], 2, []
    for _ in range(count):
        end = payload.index(b"\0", offset)
        names.append(payload[offset:end].decode())
        offset = end + 1 + 18  # table oid, column number, type oid, size, modifier, format
    return names


def _data_row(payload: bytes) -> list[str | None]:
    count, offset, values = struct.unpack_from("!h", payload)[0], 2, []
    for _ in range(count):
        size = struct.unpack_from("!i", payload, offset)[0]
        offset += 4
        values.append(None if size < 0 else payload[offset : offset + size].decode(errors="replace"))
        offset += max(size, 0)
    return values
