"""The daemon's side of a router's control socket (see router/dataplane/control_server.py).

Every failure is a RouterError that says what to check, because the daemon shows
these to the user when a deploy cannot reach its router."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from shipyard.errors import RouterError
from shipyard.router.table import RoutingTable
from shipyard.router.wire import MAX_LINE, encode_line


class RouterControlClient:
    """Talks to one router's control socket; every failure is a RouterError saying what to do."""

    def __init__(self, sock_path: str | Path, timeout: float = 5.0) -> None:
        self.sock_path = Path(sock_path)
        self.timeout = timeout

    async def ping(self) -> dict[str, Any]:
        return await self._call({"op": "ping"})

    async def set_table(self, table: RoutingTable) -> int:
        """Returns once the router persisted and serves `table`."""
        return int((await self._call({"op": "set_table", "table": table.to_dict()}))["version"])

    async def get_table(self) -> RoutingTable | None:
        raw = (await self._call({"op": "get_table"})).get("table")
        return RoutingTable.from_dict(raw) if raw else None

    async def stats(self) -> dict[str, Any]:
        return dict((await self._call({"op": "stats"}))["stats"])

    async def series(self, since: float) -> dict[str, Any]:
        """{"now": unix time, "series": {track: [{"t", "requests", "errors", "latency"}, ...]}}:
        the completed seconds after `since`, ascending; see Router.series."""
        r = await self._call({"op": "series", "since": since})
        return {"now": float(r["now"]), "series": dict(r["series"])}

    async def shutdown(self) -> None:
        await self._call({"op": "shutdown"})

    async def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        path, op = self.sock_path, request["op"]
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_LINE)
                writer.write(encode_line(request))
                await writer.drain()
                line = await reader.readline()
        except FileNotFoundError:
            raise RouterError(f"no router control socket at {path}",
                              hint="the router is not running; the daemon starts it (shipyard serve)") from None
        except ConnectionRefusedError:
            raise RouterError(f"nothing answers on the router control socket {path} (the router is gone)",
                              hint="the daemon restarts it; check the router log next to the socket") from None
        except TimeoutError:
            raise RouterError(f"the router did not answer {op} on {path} within {self.timeout:g}s",
                              hint="it may be hung; check the router log next to the socket") from None
        except (OSError, ValueError) as e:
            raise RouterError(f"cannot talk to the router on {path}: {getattr(e, 'strerror', None) or e}",
                              hint="check the router log next to the socket") from None
        finally:
            if writer is not None:
                writer.close()
        if not line:
            raise RouterError(f"the router closed {path} without answering {op}",
                              hint="it may have crashed; check the router log next to the socket")
        try:
            response = json.loads(line)
        except ValueError:
            raise RouterError(f"the router sent an unreadable answer to {op}") from None
        if not isinstance(response, dict) or not response.get("ok"):
            error = response.get("error") if isinstance(response, dict) else response
            raise RouterError(f"the router refused {op}: {error}")
        return response
