"""`shipyard hosts` and `shipyard hosts check` as a user runs them: the CLI, the real daemon
(which picks SshHostReports), real sshd on five namespace hosts. The fleet service is put
in the daemon's store as a deploy leaves it (the live slot's spec, its image in the
daemon's image store), so this test needs nothing of fleet rollouts."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard.devtools.daemonproc import DaemonProcess, cli_argv
from shipyard.images.build import BuildInput
from shipyard.images.store import ImageStore
from shipyard.rollout.records import ServiceRecord, Slot, SlotState
from shipyard.spec import parse_spec
from shipyard.state.sqlite import SqliteStore
from support.netns_hosts import NetnsFleet

pytestmark = pytest.mark.timeout(120)

SPEC = """\
service: shop
listen: 127.0.0.1:18572
run: {{command: [python3, app.py, --port, "${{PORT}}"]}}
fleet:
  hosts:
{hosts}
  ssh: {{user: {user}, identity: {identity}, known_hosts: {known_hosts}}}
"""


@pytest.fixture
def hosts(fleet5: NetnsFleet) -> Iterator[NetnsFleet]:
    yield fleet5
    for h in fleet5.hosts:   # image trees are read-only: let the fleet's clean-up remove them
        for d, _dirs, _files in os.walk(h.dir):
            with contextlib.suppress(OSError):
                os.chmod(d, 0o755)


async def store_fleet_service(daemon: DaemonProcess, fleet: NetnsFleet, tmp: Path) -> str:
    """The service as a finished deploy leaves it: built image, live slot with its spec."""
    tree = tmp / "app"
    tree.mkdir()
    (tree / "app.py").write_text("print('shop')\n")
    image = await ImageStore(daemon.paths.images).build(BuildInput("shop", tree, run_command=["python3", "app.py"]))
    hosts = "\n".join(f"    - {{name: {h.name}, address: {h.address}}}" for h in fleet.hosts)
    (tmp / "shop.yaml").write_text(SPEC.format(hosts=hosts, user=fleet.user, identity=fleet.client_key,
                                               known_hosts=fleet.known_hosts))
    spec = parse_spec((tmp / "shop.yaml").read_text(), "shop.yaml", tmp)
    rec = ServiceRecord(name="shop", listen=spec.listen, spec_path=str(tmp / "shop.yaml"), active_slot="blue")
    rec.slots["blue"] = Slot(SlotState.LIVE, image.id, spec.to_stored_dict())
    store = SqliteStore(daemon.paths.db)
    try:
        store.put_service(rec)
    finally:
        store.close()
    return image.id


def shipyard(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cli_argv(), *args, "--state-dir", str(daemon.paths.root)], capture_output=True,
                          text=True, timeout=90, env={**os.environ, "COLUMNS": "200"})


async def test_hosts_and_hosts_check_through_the_daemon(hosts: NetnsFleet, daemon: DaemonProcess,
                                                        tmp: Path) -> None:
    image_id = await store_fleet_service(daemon, hosts, tmp)
    down = hosts.hosts[1]
    hosts.stop_sshd(down)

    listed = shipyard(daemon, "hosts", "--json")
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    assert doc["services"] == ["shop"]
    assert [(h["name"], h["state"]) for h in doc["hosts"]] == [
        (h.name, "unreachable" if h is down else "up") for h in hosts.hosts]
    assert all(h["services"] == ["shop"] for h in doc["hosts"])
    assert doc["hosts"][0]["facts"]["host"]["hostname"] == hosts.hosts[0].name
    assert "connection refused" in doc["hosts"][1]["error"]

    table = shipyard(daemon, "hosts")
    assert table.returncode == 0, table.stderr
    assert f"{down.name}: cannot open an SSH connection to {down.name} ({down.address}:22): connection refused" \
        in " ".join(table.stdout.split())

    checked = shipyard(daemon, "hosts", "check", "shop")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    lines = [line.split() for line in checked.stdout.splitlines()]
    assert lines[0][:3] == ["shop", "(image", f"{image_id[:12]}):"] and "1 host(s) cannot run it" in checked.stdout
    verdicts = {w[1]: w[0] for w in lines[1:] if w and w[0] in ("OK", "FAIL")}
    assert verdicts == {h.name: "FAIL" if h is down else "OK" for h in hosts.hosts}
    assert f"ssh: cannot open an SSH connection to {down.name}" in checked.stdout

    unknown = shipyard(daemon, "hosts", "check", "nope")
    assert unknown.returncode == 1 and "error: no service named 'nope'" in unknown.stderr
    audit = shipyard(daemon, "history", "shop", "--json")
    assert audit.returncode == 0 and "hosts.check" in audit.stdout
