"""An asyncio client of HAProxy's admin socket (the Runtime API): one command per connection.

HAProxy answers most changes with an empty line and refusals with a sentence, so each
helper knows what success looks like and turns anything else into a RouterError that names
the command. Never blocks the event loop; every call is bounded by a timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

from shipyard.errors import RouterError

MAX_REPLY = 64 * 1024 * 1024


class RuntimeApi:
    def __init__(self, socket_path: Path, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    async def call(self, command: str, payload: str | None = None) -> str:
        """Send one command (with a `<<` payload if given) and return HAProxy's whole reply."""
        if "\n" in command or ";" in command:
            raise RouterError(f"refusing to send a HAProxy command with a newline or ';': {command!r}")
        line = f"{command} <<\n{payload.rstrip(chr(10))}\n\n" if payload else f"{command}\n"
        try:
            return await asyncio.wait_for(self._exchange(line.encode()), self.timeout)
        except TimeoutError:
            raise RouterError(f"HAProxy did not answer `{_short(command)}` within {self.timeout:g}s",
                              f"see its admin socket {self.socket_path}") from None
        except OSError as e:
            raise RouterError(f"cannot send `{_short(command)}` to HAProxy at {self.socket_path}: "
                              f"{e.strerror or e}", "is HAProxy running? the daemon restarts it") from None

    async def _exchange(self, data: bytes) -> str:
        reader, writer = await asyncio.open_unix_connection(str(self.socket_path), limit=1 << 20)
        try:
            writer.write(data)
            await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()   # the master CLI answers once the request side is closed
            reply = await reader.read(MAX_REPLY)
            chunks = [reply]
            while reply:
                reply = await reader.read(MAX_REPLY)
                chunks.append(reply)
            return b"".join(chunks).decode("utf-8", "replace")
        finally:
            writer.close()

    async def change(self, command: str, payload: str | None = None, ok: str = "") -> str:
        """A command that changes state: its reply must be empty (or start with `ok`)."""
        reply = (await self.call(command, payload)).strip()
        if (ok and not reply.startswith(ok)) or (not ok and reply):
            raise RouterError(f"HAProxy refused `{_short(command)}`: {reply or 'no answer'}")
        return reply

    # -- servers -------------------------------------------------------------------------

    async def servers_state(self, backend: str | None = None) -> list[dict[str, str]]:
        """`show servers state`: one dict per server (be_name, srv_name, srv_addr, srv_port,
        srv_admin_state, ...)."""
        cmd = f"show servers state {backend}" if backend else "show servers state"
        reply = await self.call(cmd)
        if reply.strip().startswith("Can't find") or "Unknown" in reply.split("\n", 1)[0]:
            raise RouterError(f"HAProxy refused `{cmd}`: {reply.strip()}")
        lines = [ln for ln in reply.splitlines() if ln.strip()]
        header = next((ln for ln in lines if ln.startswith("# be_id")), None)
        if header is None:
            return []
        names = header[2:].split()
        return [dict(zip(names, ln.split(), strict=False)) for ln in lines if not ln.startswith("#")
                and len(ln.split()) >= len(names) - 2]

    async def dump_servers_state(self) -> str:
        """The text `load-server-state-from-file` reads back (version line included)."""
        return await self.call("show servers state")

    async def add_server(self, backend: str, name: str, args: str) -> None:
        await self.change(f"add server {backend}/{name} {args}", ok="New server registered")
        await self.change(f"enable server {backend}/{name}")

    async def set_state(self, backend: str, name: str, state: str) -> None:
        await self.change(f"set server {backend}/{name} state {state}")

    async def del_server(self, backend: str, name: str) -> bool:
        """False when HAProxy keeps it for now (connections still open): try again later."""
        reply = (await self.call(f"del server {backend}/{name}")).strip()
        if reply.startswith("Server deleted"):
            return True
        if "still" in reply or "connection" in reply or "queue" in reply:
            return False
        raise RouterError(f"HAProxy refused `del server {backend}/{name}`: {reply or 'no answer'}")

    async def weight(self, backend: str, name: str) -> int:
        reply = (await self.call(f"get weight {backend}/{name}")).strip()
        try:
            return int(reply.split()[0])
        except (IndexError, ValueError):
            raise RouterError(f"HAProxy refused `get weight {backend}/{name}`: {reply}") from None

    # -- maps ------------------------------------------------------------------------------

    async def replace_map(self, path: Path, entries: Iterable[tuple[str, str]]) -> None:
        """Swap the map's whole content atomically: prepare a version, fill it, commit it."""
        reply = await self.change(f"prepare map {path}", ok="New version created:")
        version = reply.rsplit(":", 1)[1].strip()
        body = "".join(f"{k} {v}\n" for k, v in entries)
        if body:
            await self.change(f"add map @{version} {path}", payload=body)
        await self.change(f"commit map @{version} {path}")

    async def show_map(self, path: Path) -> list[tuple[str, str]]:
        reply = await self.call(f"show map {path}")
        out = []
        for line in reply.splitlines():
            parts = line.split(" ", 2)
            if len(parts) == 3 and parts[0].startswith("0x"):
                out.append((parts[1], parts[2]))
            elif line.strip():
                raise RouterError(f"HAProxy refused `show map {path}`: {reply.strip()}")
        return out

    # -- certificates ------------------------------------------------------------------------

    async def replace_cert(self, path: Path, pem: str) -> None:
        """Swap the certificate HAProxy loaded from `path` (a `crt` of a bind line) for `pem`
        (chain and key): `set ssl cert` starts a transaction, `commit ssl cert` makes every new
        handshake use it; connections already open keep theirs. Aborted on any refusal."""
        await self.change(f"set ssl cert {path}", payload=pem, ok="Transaction")
        reply = (await self.call(f"commit ssl cert {path}")).strip()
        if "Success!" not in reply:
            await self.call(f"abort ssl cert {path}")
            raise RouterError(f"HAProxy refused `commit ssl cert {path}`: {reply or 'no answer'}")

    async def show_cert(self, path: Path) -> dict[str, str]:
        """`show ssl cert <path>` as fields (Serial, SHA1 FingerPrint, notAfter...) of the
        certificate new handshakes get."""
        reply = await self.call(f"show ssl cert {path}")
        fields = {k.strip(): v.strip() for k, sep, v in (ln.partition(":") for ln in reply.splitlines()) if sep}
        if fields.get("Filename") != str(path):
            raise RouterError(f"HAProxy refused `show ssl cert {path}`: {reply.strip()[:200]}")
        return fields

    async def stat_rows(self, prefix: str) -> list[dict[str, str]]:
        """`show stat` rows (pxname, svname, scur, qcur, status, hrsp_*, ...) of the proxies
        named `prefix...`: a BACKEND row per backend and a row per server."""
        reply = await self.call("show stat")
        lines = reply.splitlines()
        if not lines or not lines[0].startswith("# "):
            raise RouterError(f"HAProxy refused `show stat`: {reply.strip()[:200]}")
        names = lines[0][2:].split(",")
        rows = (dict(zip(names, line.split(","), strict=False)) for line in lines[1:])
        return [row for row in rows if row.get("pxname", "").startswith(prefix)]

    async def backend_responses(self, prefix: str) -> dict[str, int]:
        """Responses each backend named `prefix...` has sent (`show stat`: its hrsp_* counters)."""
        return {row["pxname"]: sum(int(row.get(k) or 0) for k in
                                   ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other"))
                for row in await self.stat_rows(prefix) if row.get("svname") == "BACKEND"}

    async def info(self) -> dict[str, str]:
        reply = await self.call("show info")
        return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in reply.splitlines()) if v}


def _short(command: str) -> str:
    return command if len(command) <= 120 else command[:117] + "..."
