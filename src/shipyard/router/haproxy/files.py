"""Where one HAProxy keeps its configuration, sockets, maps and state: all under one directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Files:
    """Where one HAProxy keeps its sockets and state (all under one directory)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "haproxy.cfg"

    @property
    def admin_socket(self) -> Path:
        return self.root / "admin.sock"

    @property
    def master_socket(self) -> Path:
        return self.root / "master.sock"

    @property
    def pid_file(self) -> Path:
        return self.root / "haproxy.pid"

    @property
    def state_file(self) -> Path:
        return self.root / "servers.state"

    @property
    def maps(self) -> Path:
        return self.root / "maps"

    def map_file(self, service: str, kind: str) -> Path:
        return self.maps / f"{service}.{kind}.map"

    def log_socket(self, service: str) -> Path:
        return self.root / f"{service}.log.sock"

    def cert_file(self, service: str) -> Path:
        """The service's certificate chain and key in one PEM (0600), as `crt` loads it and as
        `set ssl cert` names it: the name stays when the certificate is rotated."""
        return self.root / "tls" / f"{service}.pem"
