"""What outlives a HAProxy or a daemon: files in HAProxy's directory, each written atomically.

`services.json` (service -> listen) and `<service>.table.json` (the last table applied) let
a new daemon serve on as the last one did; the map files and `servers.state` are what a
restarted HAProxy loads; `shape.cfg` is the configuration as last loaded minus its servers,
so a change that needs a reload is told from one that does not."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from shipyard.errors import RouterError
from shipyard.fsutil import write_atomic
from shipyard.router.haproxy.files import Files
from shipyard.router.haproxy.maps import MAP_KINDS, map_entries, map_text
from shipyard.router.haproxy.services import Edge
from shipyard.router.table import RoutingTable


class Saved:
    def __init__(self, files: Files) -> None:
        self.files = files

    def services(self) -> dict[str, Edge]:
        try:
            doc = json.loads((self.files.root / "services.json").read_text())
            return {str(k): Edge.from_json(v) for k, v in doc.items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def save_services(self, services: dict[str, Edge]) -> None:
        atomic_write(self.files.root / "services.json",
                     json.dumps({k: v.to_json() for k, v in services.items()}, sort_keys=True))

    def table_path(self, service: str) -> Path:
        return self.files.root / f"{service}.table.json"

    def table(self, service: str) -> RoutingTable | None:
        try:
            return RoutingTable.from_dict(json.loads(self.table_path(service).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save_table(self, table: RoutingTable) -> None:
        atomic_write(self.table_path(table.service), json.dumps(table.to_dict()), mode=0o600)

    def forget(self, service: str) -> None:
        for path in (self.table_path(service), self.files.cert_file(service),
                     *(self.files.map_file(service, k) for k in MAP_KINDS)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def shape(self) -> str | None:
        try:
            return (self.files.root / "shape.cfg").read_text()
        except OSError:
            return None

    def save_shape(self, text: str) -> None:
        atomic_write(self.files.root / "shape.cfg", text)

    def maps(self, service: str, table: RoutingTable | None) -> None:
        """The map files a restarted HAProxy loads (empty without a table); rewritten only when
        they change, since ensure renders the configuration every second."""
        entries = map_entries(table) if table is not None else {k: [] for k in MAP_KINDS}
        for kind, rows in entries.items():
            path, text = self.files.map_file(service, kind), map_text(rows)
            with contextlib.suppress(OSError):
                if path.read_text() == text:
                    continue
            atomic_write(path, text, mode=0o600)

    def write_map(self, path: Path, rows: list[tuple[str, str]]) -> None:
        """A map file a restarted HAProxy loads, rewritten only when it changes."""
        text = map_text(rows)
        with contextlib.suppress(OSError):
            if path.read_text() == text:
                return
        atomic_write(path, text, mode=0o600)

    def cert(self, service: str, pem: str | None) -> None:
        """The service's combined PEM (chain and key) as `crt` loads it, 0600; removed for None.
        Rewritten only when it changes."""
        path = self.files.cert_file(service)
        if pem is None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return
        with contextlib.suppress(OSError):
            if path.read_text() == pem:
                return
        with contextlib.suppress(OSError):
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(path, pem, mode=0o600)

    def server_state(self, text: str) -> None:
        atomic_write(self.files.state_file, text)


def atomic_write(path: Path, text: str, mode: int = 0o600) -> None:
    try:
        write_atomic(path, text, mode)
    except OSError as e:
        raise RouterError(f"cannot write {path}: {e.strerror or e}", f"free space in {path.parent}") from None
