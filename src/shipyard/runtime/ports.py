"""Free TCP ports for new instances.

The kernel picks a free port when we bind port 0; we close the socket and hand the number
to the instance, which binds it a moment later. Between those two moments nothing holds the
port, so we remember what we handed out recently and never give the same number twice in
that window (two instances started back to back would otherwise race for one port)."""

from __future__ import annotations

import socket
import time

from shipyard.errors import RuntimeFailure

# Long enough to cover "allocated" -> "the instance has bound it" for a slow start.
RECENT_SECONDS = 120.0
_ATTEMPTS = 64


class PortAllocator:
    """Hands out ports that are free now and were not handed out in the last `recent_seconds`."""

    def __init__(self, recent_seconds: float = RECENT_SECONDS) -> None:
        self.recent_seconds = recent_seconds
        self._recent: dict[tuple[str, int], float] = {}

    def allocate(self, host: str = "127.0.0.1") -> int:
        now = time.monotonic()
        self._forget_older_than(now - self.recent_seconds)
        for _ in range(_ATTEMPTS):
            port = _free_port(host)
            if (host, port) not in self._recent:
                self._recent[(host, port)] = now
                return port
        raise RuntimeFailure(
            f"could not find a free TCP port on {host} after {_ATTEMPTS} attempts",
            hint="the ephemeral port range may be exhausted; check `ss -tan | wc -l` and "
            "/proc/sys/net/ipv4/ip_local_port_range",
        )

    def recent(self, host: str) -> list[int]:
        """Ports handed out on `host` within the window (for a host that picks its own ports)."""
        self._forget_older_than(time.monotonic() - self.recent_seconds)
        return sorted(port for h, port in self._recent if h == host)

    def note(self, host: str, port: int) -> None:
        """Remember `port` as handed out on `host` now (chosen elsewhere, e.g. by a remote helper)."""
        self._recent[(host, port)] = time.monotonic()

    def _forget_older_than(self, cutoff: float) -> None:
        for key in [k for k, t in self._recent.items() if t < cutoff]:
            del self._recent[key]


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])
    except OSError as exc:
        raise RuntimeFailure(
            f"cannot bind a TCP port on {host}: {exc.strerror or exc}",
            hint="instances must listen on a local address of this machine, e.g. 127.0.0.1",
        ) from exc


# One allocator per process: every LocalRuntime in the daemon shares its memory.
default_allocator = PortAllocator()


def allocate_port(host: str = "127.0.0.1") -> int:
    """A free port on `host`, not handed out by this process in the last RECENT_SECONDS."""
    return default_allocator.allocate(host)
