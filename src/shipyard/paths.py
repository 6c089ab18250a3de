"""Where the daemon keeps things: one state directory, found from --state-dir or SHIPYARD_HOME.

Every process (daemon, CLI, router, tests) derives its file locations from here, so a
single directory is the whole installation and a temporary one is a whole sandbox."""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "SHIPYARD_HOME"


def default_home() -> Path:
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "shipyard"


class StatePaths:
    """Plain class rather than a dataclass: `shipyard rollback` imports this before it
    sends its request, and every millisecond of import is a millisecond of the switch."""

    __slots__ = ("root",)

    def __init__(self, root: Path) -> None:
        self.root = root

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StatePaths) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def __repr__(self) -> str:
        return f"StatePaths({str(self.root)!r})"

    @classmethod
    def resolve(cls, state_dir: str | Path | None = None) -> StatePaths:
        return cls(Path(state_dir).expanduser().resolve() if state_dir else default_home().resolve())

    @property
    def db(self) -> Path:
        return self.root / "state.db"

    @property
    def token(self) -> Path:
        return self.root / "token"

    @property
    def api(self) -> Path:
        """JSON file with the daemon's API address and pid, written when it listens."""
        return self.root / "api.json"

    @property
    def daemon_log(self) -> Path:
        return self.root / "daemon.log"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def instances(self) -> Path:
        return self.root / "instances"

    def instance_dir(self, instance_id: str) -> Path:
        return self.instances / instance_id

    @property
    def routers(self) -> Path:
        return self.root / "router"

    def router_socket(self, service: str) -> Path:
        return self.routers / f"{service}.sock"

    def router_table(self, service: str) -> Path:
        return self.routers / f"{service}.table.json"

    def router_log(self, service: str) -> Path:
        return self.routers / f"{service}.log"

    @property
    def tls(self) -> Path:
        """Installed certificates (by fingerprint, 0600) and what each service serves (certificates.py)."""
        return self.root / "tls"

    def ensure(self) -> StatePaths:
        for d in (self.root, self.images, self.instances, self.routers):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        return self
