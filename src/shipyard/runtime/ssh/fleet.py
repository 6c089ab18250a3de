"""The engine's Fleet port over SSH: a fleet spec's hosts become targets of the one
SshRuntime, through one SshConnections pool per distinct `fleet.ssh` section (two services
logging in as different users keep their own connections; two with the same section share
them, one connection per host)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from shipyard.runtime.ssh.connections import SshConnections
from shipyard.runtime.ssh.drift_scan import SshDriftScan
from shipyard.runtime.ssh.hostkeys import TrustedKey
from shipyard.runtime.ssh.options import SshOptions, options_from_spec, targets_from_spec
from shipyard.runtime.ssh.runtime import SshRuntime
from shipyard.spec.fleet import FleetSpec


class SshFleet:
    """Implements shipyard.engine.ports.Fleet for an SshRuntime."""

    def __init__(self, runtime: SshRuntime, on_trust: Callable[[TrustedKey], None] | None = None,
                 drift: SshDriftScan | None = None, **tuning: object) -> None:
        self.runtime = runtime
        self.drift = drift
        """The fleet drift scanner, told of every host the runtime is (on the same connections)."""
        self._on_trust = on_trust
        """Told of every host key first trusted under trust_new_hosts (the daemon audits it)."""
        self._tuning = tuning
        """Transport settings the spec does not expose (timeouts, keepalive), for every pool."""
        self._pools: dict[SshOptions, SshConnections] = {}
        self._used: dict[str, tuple[SshOptions, tuple[tuple[str, str], ...]]] = {}

    async def use(self, service: str, fleet: FleetSpec, base_dir: Path) -> None:
        options = options_from_spec(fleet.ssh, base_dir, **self._tuning)   # type: ignore[arg-type]
        targets = targets_from_spec(fleet)
        key = (options, tuple((t.name, t.address) for t in targets))
        if self._used.get(service) == key:
            return
        pool = self._pools.get(options)
        if pool is None:
            pool = self._pools[options] = SshConnections(options, on_trust=self._on_trust)   # reads the identity: may raise
        self.runtime.add_targets(pool, targets)
        if self.drift is not None:
            self.drift.add_targets(pool, targets)
        self._used[service] = key
        # the handshakes (max_connects at once) before the first batch, not inside its starts'
        # connect wait: 100 hosts under load took longer than that for the last in line
        await pool.connect_all(targets, timeout=options.connect_timeout)

    async def stop_unrecorded(self, address: str, recorded: Callable[[str], bool], timeout: float) -> list[str]:
        return await self.runtime.stop_unrecorded(address, recorded, timeout)

    def unreachable_since(self, address: str) -> float | None:
        return self.runtime.unreachable_since(address) if self.runtime.knows(address) else None

    async def close(self) -> None:
        """The runtime's (and scanner's) helpers, then every pool's connections (instances stay running)."""
        await self.runtime.close()
        if self.drift is not None:
            await self.drift.close()
        for pool in self._pools.values():
            await pool.close()
        self._pools.clear()
        self._used.clear()
