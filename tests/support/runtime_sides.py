"""The two sides the Runtime port suite runs on (tests/integration/test_runtime_port.py):
LocalRuntime on this machine, and SshRuntime on a namespace host with its own sshd. Each
side knows how to launch from a directory of files, read a file where the instance runs,
tell whether a pid is gone *there* (a host has its own pid namespace) and wait until its
runtime's answers are fresh (SshRuntime answers from a cache; see its docstring)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

from shipyard.images.build import BuildInput
from shipyard.images.store import ImageStore
from shipyard.rollout.records import Instance, LaunchSpec
from shipyard.runtime.local import LocalRuntime, read_proc_stat
from shipyard.runtime.ssh.connections import SshConnections
from shipyard.runtime.ssh.runtime import SshRuntime
from support.netns_hosts import NetnsFleet
from support.ssh_options import options_for, targets

GONE_SCRIPT = (
    "import sys\n"
    "try:\n    s = open('/proc/%s/stat' % sys.argv[1]).read()\n"
    "except OSError:\n    sys.exit(0)\n"
    "sys.exit(0 if s.rsplit(')', 1)[1].split()[0] in 'ZX' else 1)\n"
)


class LocalSide:
    kind = "local"
    address = "127.0.0.1"
    py = sys.executable

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.runtime: Any = LocalRuntime()
        self.started: list[Instance] = []

    async def launch(self, tree: Path, command: list[str], env: dict[str, str] | None = None,
                     name: str = "shop-1") -> LaunchSpec:
        return LaunchSpec(instance_id=name, service="shop", slot="blue", image_id="sha256-test", tree=tree,
                          command=command, env=env or {}, instance_dir=self.tmp / "instances" / name,
                          host=self.address)

    async def start(self, launch: LaunchSpec) -> Instance:
        inst = await self.runtime.start(launch)
        self.started.append(inst)
        return inst

    def data_dir(self, name: str) -> str:
        return str(self.tmp / "instances" / name / "data")

    async def read(self, path: str) -> str | None:
        try:
            return Path(path).read_text()
        except OSError:
            return None

    async def pid_gone(self, pid: int) -> bool:
        stat = read_proc_stat(pid)
        return stat is None or stat.dead

    async def settle(self, runtime: Any, *instances: Instance) -> None:
        """LocalRuntime reads /proc on every call: always fresh."""

    async def second_runtime(self) -> Any:
        return LocalRuntime()

    async def close(self) -> None:
        for inst in self.started:
            stat = read_proc_stat(inst.pid)
            if stat is None or stat.start_time == inst.start_time:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(inst.pid, signal.SIGKILL)


class SshSide:
    kind = "ssh"
    py = "python3"   # the host's own

    def __init__(self, tmp: Path, fleet: NetnsFleet) -> None:
        self.tmp = tmp
        self.fleet = fleet
        self.host = fleet.hosts[0]
        self.address = self.host.address
        self.images = ImageStore(tmp / "images")
        self.pools: list[SshConnections] = []
        self.runtimes: list[SshRuntime] = []
        self.started: list[Instance] = []
        self.runtime: Any = None

    async def open(self) -> SshSide:
        self.runtime = await self.second_runtime()
        return self

    async def second_runtime(self, **kw: Any) -> SshRuntime:
        """A runtime on a pool of its own, as a restarted controller has."""
        pool = SshConnections(options_for(self.fleet))
        self.pools.append(pool)
        rt = SshRuntime(pool, self.images, targets(self.fleet), connect_wait=kw.pop("connect_wait", 5.0), **kw)
        self.runtimes.append(rt)
        return rt

    async def launch(self, tree: Path, command: list[str], env: dict[str, str] | None = None,
                     name: str = "shop-1") -> LaunchSpec:
        image = await self.images.build(BuildInput("shop", tree, run_command=command))
        return LaunchSpec(instance_id=name, service="shop", slot="blue", image_id=image.id, tree=tree,
                          command=command, env=env or {}, instance_dir=self.tmp / "instances" / name,
                          host=self.address)

    async def start(self, launch: LaunchSpec) -> Instance:
        inst = await self.runtime.start(launch)
        self.started.append(inst)
        return inst

    def data_dir(self, name: str) -> str:
        return f"/root/.shipyard/instances/{name}/data"

    def local_path(self, path: str) -> Path:
        """Where a host path is seen from here: the host's /root is its home directory."""
        assert path.startswith("/root/"), path
        return self.host.dir / "home" / path.removeprefix("/root/")

    async def read(self, path: str) -> str | None:
        try:
            return self.local_path(path).read_text()
        except OSError:
            return None

    async def pid_gone(self, pid: int) -> bool:
        result = await self.pools[0].host(targets(self.fleet)[0]).run(["python3", "-c", GONE_SCRIPT, str(pid)])
        assert result.exit_status in (0, 1), result
        return result.exit_status == 0

    async def settle(self, runtime: SshRuntime, *instances: Instance) -> None:
        await runtime.refresh(instances)

    async def close(self) -> None:
        for rt in self.runtimes:
            await rt.close()
        for pool in self.pools:
            await pool.close()
        for d, _dirs, _files in os.walk(self.host.dir):   # read-only trees: let the fleet remove them
            with contextlib.suppress(OSError):
                os.chmod(d, 0o755)
