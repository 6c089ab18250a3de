"""`shipyard hosts` and `hosts check` on five namespace hosts with real sshd: facts read on
the hosts themselves (their own hostname from their uts namespace, the kernel's boot id,
disk under the helper root), a host whose sshd is stopped shown unreachable with the reason,
one whose python3 is too old shown as "no helper" with what to install, and a check that passes a good host (its image shipped and verified there) and fails, each at
its own step: no sshd, a python3 too old for the helper, a disk too small for the image, the
service's port held by a process that is not shipyard's."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from ssh_support import QUICK_BACKOFF

import shipyard
from shipyard.fleet.host_status import FAIL, OK, SKIP, bytes_text
from shipyard.images.build import BuildInput
from shipyard.images.store import ImageStore
from shipyard.runtime.ssh.host_report import SshHostReports
from shipyard.runtime.ssh.hostkeys import TrustedKey
from shipyard.spec import Spec, parse_spec
from support.netns_hosts import NetnsFleet, NetnsHost

pytestmark = pytest.mark.timeout(120)

PORT = 18571
SPEC = """\
service: shop
listen: 127.0.0.1:{port}
run: {{command: [python3, app.py, --port, "${{PORT}}"]}}
fleet:
  hosts:
{hosts}
  ssh: {{user: {user}, identity: {identity}, known_hosts: {known_hosts}, trust_new_hosts: {trust}}}
"""
CONNECT_WAIT = 15.0
"""Generous: on a loaded 2-core machine an SSH handshake can take seconds."""
OLD_PYTHON = "#!/bin/sh\n# answers the helper's probe as a Python 3.8 would\necho '3.8 0'\n"


def spec_for(fleet: NetnsFleet, root: Path, trust: bool = False) -> Spec:
    hosts = "\n".join(f"    - {{name: {h.name}, address: {h.address}}}" for h in fleet.hosts)
    return parse_spec(SPEC.format(port=PORT, hosts=hosts, user=fleet.user, identity=fleet.client_key,
                                  known_hosts=fleet.known_hosts, trust=str(trust).lower()), "shop.yaml", root)


@pytest.fixture
def hosts(fleet5: NetnsFleet) -> Iterator[NetnsFleet]:
    yield fleet5
    for h in fleet5.hosts:   # image trees are read-only: let the fleet's clean-up remove them
        for d, _dirs, _files in os.walk(h.dir):
            with contextlib.suppress(OSError):
                os.chmod(d, 0o755)


@pytest.fixture
async def images(tmp: Path) -> AsyncIterator[tuple[ImageStore, str]]:
    tree = tmp / "app"
    tree.mkdir()
    (tree / "app.py").write_text("print('shop')\n")
    (tree / "data.bin").write_bytes(os.urandom(256 << 10))
    store = ImageStore(tmp / "images")
    image = await store.build(BuildInput("shop", tree, run_command=["python3", "app.py"]))
    yield store, image.id


def reports(store: ImageStore, on_trust: Callable[[TrustedKey], None] | None = None) -> SshHostReports:
    return SshHostReports(store, connect_wait=CONNECT_WAIT, backoff=QUICK_BACKOFF, on_trust=on_trust)


def in_host(h: NetnsHost, *argv: str) -> None:
    """Run argv inside the host's namespaces (its mounts stay its own: the mount namespace is private)."""
    subprocess.run(["nsenter", "-t", str(h.init_pid), "-a", *argv], check=True, capture_output=True, timeout=10)


def give_old_python(h: NetnsHost) -> None:
    """A python3 that answers like a 3.8, first on sshd's PATH on that host only."""
    fake_bin = h.dir / "fake-bin"
    fake_bin.mkdir()
    (fake_bin / "python3").write_text(OLD_PYTHON)
    (fake_bin / "python3").chmod(0o755)
    in_host(h, "mount", "--bind", str(fake_bin), "/usr/local/bin")
    assert shutil.which("python3", path="/usr/local/bin") is None, "a host's mount reached this machine"


async def test_hosts_report_facts_and_an_unreachable_host(hosts: NetnsFleet, images: tuple[ImageStore, str],
                                                          tmp: Path) -> None:
    store, _ = images
    down, old = hosts.hosts[1], hosts.hosts[2]
    hosts.stop_sshd(down)
    give_old_python(old)
    t0 = time.monotonic()
    got = await reports(store).report(spec_for(hosts, tmp).fleet, tmp)   # type: ignore[arg-type]
    seconds = time.monotonic() - t0
    assert [r.name for r in got] == [h.name for h in hosts.hosts]
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    for r, h in zip(got, hosts.hosts, strict=True):
        if h in (down, old):
            continue
        assert r.state == "up" and r.reachable and r.error is None, r
        facts = r.facts
        assert facts is not None
        assert facts["helper_version"] == shipyard.__version__ and facts["python"].startswith("3.")
        assert facts["root"] == "/root/.shipyard"
        host = facts["host"]
        assert host["hostname"] == h.name                    # read on the host, in its own uts namespace
        assert host["boot_id"] == boot_id and host["cpu_count"] == os.cpu_count()
        assert len(host["load"]) == 3 and host["memory"]["total"] > 0
        assert 0 < host["disk"]["free"] <= host["disk"]["total"]
    lost = got[1]
    assert lost.state == "unreachable" and not lost.reachable and lost.facts is None
    assert lost.error is not None and lost.error.startswith(f"cannot open an SSH connection to {down.name} "
                                                            f"({down.address}:22): ")
    assert lost.error.endswith("connection refused (nothing listens on that port: is sshd running?)")
    assert lost.hint == "check that the host is up and sshd listens there"
    print(f"report of 5 hosts: {seconds:.2f}s (the stopped one {lost.seconds:.2f}s)")
    no_helper = got[2]
    assert no_helper.state == "no helper" and no_helper.reachable and no_helper.facts is None
    assert no_helper.error == f"the shipyard helper needs Python 3.11 or later, {old.name}'s python3 is 3.8"
    assert no_helper.hint == "install python3 >= 3.11 on the host"
    # a refused connect is final for a report: not waited out until connect_wait, nor retried
    assert lost.seconds < CONNECT_WAIT / 3, f"a stopped sshd held its row up for {lost.seconds:.1f}s"
    assert seconds < 60


async def test_hosts_check_names_the_step_each_bad_host_fails(hosts: NetnsFleet, images: tuple[ImageStore, str],
                                                              tmp: Path) -> None:
    store, image_id = images
    good, no_sshd, old_python, small_disk, port_taken = hosts.hosts
    hosts.stop_sshd(no_sshd)
    give_old_python(old_python)
    (small_disk.dir / "home" / ".shipyard").mkdir()
    in_host(small_disk, "mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", "/root/.shipyard")
    listener = subprocess.Popen(
        ["nsenter", "-t", str(port_taken.init_pid), "-a", "python3", "-c",
         "import socket, sys, time; s = socket.create_server((sys.argv[1], int(sys.argv[2]))); "
         "print('up', flush=True); time.sleep(600)", port_taken.address, str(PORT)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        assert listener.stdout is not None and listener.stdout.readline() == b"up\n"
        t0 = time.monotonic()
        checks = await reports(store).check(spec_for(hosts, tmp), image_id, {})
        seconds = time.monotonic() - t0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(listener.pid, signal.SIGKILL)
        listener.wait(10)
    by = {c.name: c for c in checks}
    steps = {c.name: {s.name: s for s in c.steps} for c in checks}

    assert by[good.name].ok and by[good.name].reason is None
    assert [s.status for s in by[good.name].steps] == [OK] * 6
    image = steps[good.name]["image"].detail
    assert image.startswith(f"image {image_id[:12]} at /root/.shipyard/images/") and "verified" in image
    assert (good.dir / "home" / ".shipyard" / "images").is_dir()
    assert f"port {PORT} is free" in steps[good.name]["ports"].detail

    assert not by[no_sshd.name].ok and by[no_sshd.name].reason is not None
    assert by[no_sshd.name].reason.startswith(f"ssh: cannot open an SSH connection to {no_sshd.name}")
    assert [s.status for s in by[no_sshd.name].steps] == [FAIL] + [SKIP] * 5

    assert by[old_python.name].reason == (f"python: the shipyard helper needs Python 3.11 or later, "
                                          f"{old_python.name}'s python3 is 3.8")
    assert steps[old_python.name]["python"].hint == "install python3 >= 3.11 on the host"

    disk = steps[small_disk.name]["disk"]
    need = bytes_text(2 * store.get(image_id).size)
    assert disk.status == FAIL and disk.detail.endswith(f" MiB free under /root/.shipyard, the image needs {need} "
                                                        "(objects and tree) + 64.0 MiB margin"), disk
    assert float(disk.detail.split()[0]) < 8                        # the 8 MiB tmpfs, less the helper
    assert steps[small_disk.name]["ports"].status == OK
    assert steps[small_disk.name]["image"].status == SKIP

    ports = steps[port_taken.name]["ports"]
    assert ports.status == FAIL, ports
    assert ports.detail.startswith(f"the service's port {PORT} is taken on {port_taken.name}: "
                                   f"{port_taken.address}:{PORT} by pid ")
    assert steps[port_taken.name]["image"].status == OK
    print(f"check of 5 hosts: {seconds:.2f}s; " + "; ".join(f"{c.name}: {c.reason}" for c in checks))
    assert steps[no_sshd.name]["ssh"].status == FAIL and by[no_sshd.name].seconds < CONNECT_WAIT / 3
    assert seconds < 60, f"the check of 5 hosts took {seconds:.1f}s"


async def test_a_first_contact_under_trust_new_hosts_is_told_for_the_audit(fleet1: NetnsFleet, tmp: Path) -> None:
    host = fleet1.hosts[0]
    fleet1.known_hosts.write_text("")
    spec = spec_for(fleet1, tmp, trust=True)
    assert spec.fleet is not None
    told: list[TrustedKey] = []
    [first] = await reports(ImageStore(tmp / "images"), on_trust=told.append).report(spec.fleet, tmp)
    assert first.state == "up" and len(told) == 1, (first, told)
    assert told[0].host == host.name and told[0].address == host.address
    assert told[0].fingerprint.startswith("SHA256:") and told[0].known_hosts == str(fleet1.known_hosts)
    assert host.public_key_line().split()[1] in fleet1.known_hosts.read_text()
    [again] = await reports(ImageStore(tmp / "images"), on_trust=told.append).report(spec.fleet, tmp)
    assert again.state == "up" and len(told) == 1      # known now: nothing new to audit
