"""What only HAProxy knows at this moment, read from its stats socket (`show stat` rows), in
the embedded router's stats fields: requests in flight per track (the backend's scur, waiting
ones included, as the embedded router counts them) and per instance (its scur), requests
waiting for a free slot of an instance (qcur of the backend and of its servers), whether an
instance is out of rotation, and each server's maxconn. Pure: rows in, numbers out."""

from __future__ import annotations

from typing import Any

from shipyard.router.haproxy.services import backend_name, server_name
from shipyard.router.table import RoutingTable

OUT_OF_ROTATION = {"MAINT", "DRAIN", "DOWN", "NOLB"}
"""`show stat` statuses (first word) of a server HAProxy sends no new request to."""


def as_int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def fill(table: RoutingTable, rows: list[dict[str, str]], tracks: dict[str, dict[str, Any]],
         ups: dict[str, dict[str, Any]]) -> None:
    """Set inflight/queued of each track in `tracks` and inflight/ejected of each instance in
    `ups` (keyed by upstream id) from the service's `show stat` rows."""
    by_server = {(row.get("pxname", ""), row.get("svname", "")): row for row in rows}
    for track, t in tracks.items():
        backend = backend_name(table.service, track)
        t["inflight"] = as_int(by_server.get((backend, "BACKEND"), {}).get("scur"))
        t["queued"] = sum(as_int(row.get("qcur")) for (px, _sv), row in by_server.items() if px == backend)
    for track, us in table.tracks.items():
        for u in us:
            row = by_server.get((backend_name(table.service, track), server_name(u)))
            if row is not None and u.id in ups:
                ups[u.id]["inflight"] = as_int(row.get("scur"))
                ups[u.id]["ejected"] = row.get("status", "").split(" ", 1)[0] in OUT_OF_ROTATION


def limits(rows: list[dict[str, str]]) -> dict[tuple[str, str], int]:
    """(backend, server) -> its maxconn (slim)."""
    return {(row.get("pxname", ""), row.get("svname", "")): as_int(row.get("slim"))
            for row in rows if row.get("svname") != "BACKEND"}
