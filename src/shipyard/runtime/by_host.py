"""One Runtime for both kinds of instance: an instance whose host is a fleet host (an
inventory address the SSH runtime reaches) runs there, every other one on this machine.

The engine keeps one `Runtime` and never asks which kind it holds; a daemon serving a
single-machine service and a fleet service at once needs exactly this split."""

from __future__ import annotations

from typing import Any

from shipyard.rollout.records import Instance, LaunchSpec
from shipyard.runtime.local import LocalRuntime
from shipyard.runtime.ssh.runtime import SshRuntime


class ByHostRuntime:
    """Runtime that sends each call to the SSH runtime when the host is one of its hosts,
    else to the local runtime; implements shipyard.engine.ports.Runtime."""

    def __init__(self, local: LocalRuntime, ssh: SshRuntime) -> None:
        self.local = local
        self.ssh = ssh

    def _for(self, host: str) -> Any:
        return self.ssh if self.ssh.knows(host) else self.local

    @property
    def enforcement(self) -> Any:
        """What keeps this machine's instances out of their trees (queries.enforcement reads it)."""
        return self.local.enforcement

    async def start(self, launch: LaunchSpec) -> Instance:
        return await self._for(launch.host).start(launch)

    async def stop(self, instance: Instance, timeout: float) -> None:
        await self._for(instance.host).stop(instance, timeout)

    def is_alive(self, instance: Instance) -> bool:
        return bool(self._for(instance.host).is_alive(instance))

    def exit_code(self, instance: Instance) -> int | None:
        code: int | None = self._for(instance.host).exit_code(instance)
        return code

    def log_tail(self, instance: Instance, lines: int = 20) -> str:
        return str(self._for(instance.host).log_tail(instance, lines))

    async def read_log(self, instance: Instance, lines: int = 100) -> str | None:
        """The end of the log of an instance on a fleet host, fetched from there; None for one
        on this machine (its log file is read where it is)."""
        return await self.ssh.read_log(instance, lines) if self.ssh.knows(instance.host) else None

    async def close(self) -> None:
        await self.ssh.close()
