"""A service running on namespace hosts, for the fleet drift scan (tests/integration/fleet/
test_fleet_drift.py and benchmarks/fleet_drift.py): instances started with SshRuntime
directly, the records the engine would keep, and a SshDriftScan on the same connections.
Helpers reach into a host the way someone with a root shell there would: its files through
the per-host home directory, its processes through an SSH command."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from pathlib import Path

from shipyard.drift.fleet import FleetHost, FleetInputs, ManagedFile, RemoteLaunch
from shipyard.drift.report import DriftReport, Mode
from shipyard.images.build import BuildInput
from shipyard.images.store import ImageStore
from shipyard.rollout.records import Instance, LaunchSpec, ServiceRecord, Slot, SlotState
from shipyard.runtime.ssh.connections import SshConnections
from shipyard.runtime.ssh.drift_scan import SshDriftScan
from shipyard.runtime.ssh.runtime import SshRuntime
from support.netns_hosts import NetnsFleet, NetnsHost
from support.ssh_options import options_for, targets

APP = """\
import http.server, os, sys

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = open("version.txt", "rb").read()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass

http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
"""
SERVICE = "shop"
EDGE_CONFIG = "/root/.shipyard/edge/haproxy.cfg"
EDGE_TEXT = "global\n  maxconn 1000\nfrontend shop\n  bind :8080\n  default_backend app\n"


def write_app(tree: Path, extra_files: int = 0) -> None:
    tree.mkdir(parents=True, exist_ok=True)
    (tree / "app.py").write_text(APP)
    (tree / "version.txt").write_text("v1\n")
    for i in range(extra_files):
        sub = tree / "lib" / f"d{i // 100:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"m{i:05d}.py").write_text(f"# module {i}\nVALUE = {i}\n" + "x = 1\n" * (i % 50))


class Scene:
    def __init__(self, fleet: NetnsFleet, tmp: Path) -> None:
        self.fleet = fleet
        self.tmp = tmp
        self.images = ImageStore(tmp / "images")
        self.pool = SshConnections(options_for(fleet))
        self.runtime = SshRuntime(self.pool, self.images, targets(fleet))
        self.scanner = SshDriftScan(self.pool, targets(fleet))
        self.image_id = ""
        self.launch_env = {"GREETING": "hello", "API_TOKEN": "s3cret"}
        self.instances: list[tuple[Instance, str]] = []
        self.managed: dict[str, tuple[ManagedFile, ...]] = {}

    async def deploy(self, per_host: int = 1, extra_files: int = 0) -> None:
        tree = self.tmp / "tree"
        write_app(tree, extra_files)
        image = await self.images.build(BuildInput(SERVICE, tree, run_command=["python3", "app.py"]))
        self.image_id = image.id

        async def on(host: NetnsHost, n: int) -> Instance:
            iid = f"{SERVICE}-blue-{self.fleet.hosts.index(host):02x}{n:03x}"
            launch = LaunchSpec(instance_id=iid, service=SERVICE, slot="blue",
                                image_id=image.id, tree=tree, command=self.command(host), env=self.launch_env,
                                instance_dir=self.tmp / "instances", host=host.address)
            return await self.runtime.start(launch)

        for n in range(per_host):   # the first start on each host ships the image: hosts in parallel
            started = await asyncio.gather(*(on(h, n) for h in self.fleet.hosts))
            self.instances.extend((i, "healthy") for i in started)

    async def relaunch(self, inst: Instance, instance_id: str) -> LaunchSpec:
        """The LaunchSpec of a successor of ``inst`` on the same host (what a heal starts)."""
        host = next(h for h in self.fleet.hosts if h.address == inst.host)
        return LaunchSpec(instance_id=instance_id, service=SERVICE, slot=inst.slot, image_id=inst.image_id,
                          tree=self.tmp / "tree", command=self.command(host), env=self.launch_env,
                          instance_dir=self.tmp / "instances", host=inst.host)

    def command(self, host: NetnsHost) -> list[str]:
        return ["python3", "app.py", host.address, "${PORT}"]

    def record(self) -> ServiceRecord:
        replicas = len(self.instances)
        return ServiceRecord(SERVICE, "0.0.0.0:8080", active_slot="blue",
                             slots={"blue": Slot(SlotState.LIVE, self.image_id, replicas=replicas),
                                    "green": Slot()})

    def inputs(self) -> FleetInputs:
        hosts = [FleetHost(h.name, h.address, self.managed.get(h.name, ())) for h in self.fleet.hosts]
        by_address = {h.address: h for h in self.fleet.hosts}
        launches = {i.id: RemoteLaunch(self.command(by_address[i.host]), dict(self.launch_env),
                                       frozenset({"API_TOKEN"})) for i, _ in self.instances}
        return FleetInputs(self.record(), list(self.instances), hosts, launches)

    async def scan(self, mode: Mode = "metadata") -> DriftReport:
        return await self.scanner.scan(self.inputs(), mode)

    # a root shell on the host ------------------------------------------------------------------
    def host(self, index: int) -> NetnsHost:
        return self.fleet.hosts[index]

    def local(self, host: NetnsHost, path: str) -> Path:
        """Where a host path under /root is seen from here (its home is a directory of ours)."""
        assert path.startswith("/root/"), path
        return host.dir / "home" / path.removeprefix("/root/")

    def tree_file(self, host: NetnsHost, rel: str) -> Path:
        return self.local(host, f"/root/.shipyard/images/trees/{self.image_id}/{rel}")

    def baseline(self, host: NetnsHost) -> Path:
        return self.local(host, f"/root/.shipyard/images/drift-baselines/{self.image_id}.json")

    def write_edge_config(self) -> None:
        """The file shipyard would write on each host outside any tree (a host-local HAProxy's)."""
        for h in self.fleet.hosts:
            path = self.local(h, EDGE_CONFIG)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(EDGE_TEXT)
            path.chmod(0o644)
            self.managed[h.name] = (ManagedFile(EDGE_CONFIG, hashlib.sha256(EDGE_TEXT.encode()).hexdigest(),
                                                "0644", "HAProxy configuration"),)

    async def sh(self, host: NetnsHost, argv: list[str]) -> str:
        result = await self.pool.host(targets(self.fleet)[self.fleet.hosts.index(host)]).run(argv, timeout=20)
        assert result.ok, result
        return result.stdout.decode()

    async def detached(self, host: NetnsHost, argv: list[str], env: dict[str, str] | None = None) -> None:
        """A process left running on the host by hand (no pty; ``setsid -f``: it outlives the command)."""
        prefix = ["env", "-i", *(f"{k}={v}" for k, v in env.items())] if env is not None else []
        # its output away from the SSH channel, or the command would wait for it to end
        await self.sh(host, ["setsid", "-f", "sh", "-c", 'exec "$@" </dev/null >/dev/null 2>&1', "sh",
                             *prefix, *argv])

    async def listening(self, host: NetnsHost, address: str, port: int, seconds: float = 10) -> None:
        deadline = time.monotonic() + seconds
        while True:
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection(address, port)
                w.close()
                return
            assert time.monotonic() < deadline, f"nothing listens on {address}:{port} on {host.name}"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        await self.scanner.close()
        await self.runtime.close()
        await self.pool.close()
        for h in self.fleet.hosts:   # read-only trees: let the fleet remove them
            for d, _dirs, _files in os.walk(h.dir):
                with contextlib.suppress(OSError):
                    os.chmod(d, 0o755)
