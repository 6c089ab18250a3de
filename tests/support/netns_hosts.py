"""Test hosts as Linux namespaces, each a small machine with its own sshd, on a bridge
the test creates and removes.

Every host is a named network namespace (`ip netns`) plus a pid, mount and uts
namespace made by `unshare`: its pid 1 is a tiny reaping shell, its /run is a
private tmpfs (sshd wants /run/sshd), /root is bind-mounted over by a per-host
home (root's own shell start-up files would cost ~85 ms per command), and its
sshd allows only the per-run test key. Names of everything made here start with
PREFIX and carry the owner's pid, so the sweeper run at start removes only what a
dead run left behind, never a concurrent run's hosts.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import ipaddress
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from support.netns_leftovers import (
    PREFIX,
    cmdline,
    ip,
    ip_batch,
    kill_pids,
    leftovers,
    made_by,
    remove,
    running,
    sweep_stale,
)

__all__ = ["NetnsFleet", "NetnsHost", "leftovers", "made_by", "netns_hosts", "running", "sweep_stale",
           "unusable_reason"]

SSHD = "/usr/sbin/sshd"
USER = "root"
_LOCK_DIR = tempfile.gettempdir()     # flocked itself while a run picks its subnet: no lock file is left
_runs = itertools.count()


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def unusable_reason() -> str | None:
    """Why this process cannot make namespace hosts (a precise skip reason), or None."""
    if os.geteuid() != 0:
        return f"namespace test hosts need root (euid is {os.geteuid()})"
    caps = int(next(line for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("CapEff:")).split()[1], 16)
    missing = [name for bit, name in ((12, "CAP_NET_ADMIN"), (21, "CAP_SYS_ADMIN")) if not caps >> bit & 1]
    if missing:
        return f"namespace test hosts need {' and '.join(missing)} (bridge, veth, unshare, mounts)"
    return None


def _listening_on_22(pid: int) -> bool:
    """Read from the host's own /proc/net/tcp (its network namespace): no packet is sent, so a
    host whose address is not up yet costs no ARP timeout."""
    try:
        rows = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(r.split()[1].endswith(":0016") and r.split()[3] == "0A" for r in rows)


@dataclass
class NetnsHost:
    """One test host: its names, address, files and the pid (root pid namespace) of its init."""

    name: str
    address: str
    netns: str
    veth: str
    dir: Path
    init_pid: int = 0
    launcher: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def sshd_config(self) -> Path:
        return self.dir / "sshd_config"

    def public_key_line(self) -> str:
        return Path(f"{self.host_key}.pub").read_text().strip()

    def pids(self) -> list[int]:
        """Every live process in this host's pid namespace (root-namespace pids)."""
        try:
            ns = os.readlink(f"/proc/{self.init_pid}/ns/pid")
        except OSError:
            return []
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/ns/pid") == ns and running(int(entry)):
                        found.append(int(entry))
        return found

    def sshd_listener(self) -> int | None:
        return next((p for p in self.pids() if "[listener]" in cmdline(p)), None)

    def sshd_sessions(self) -> list[int]:
        """The per-connection sshd monitors: killing one drops that SSH connection."""
        return [p for p in self.pids() if cmdline(p).startswith("sshd: ") and "[listener]" not in cmdline(p)]


class NetnsFleet:
    """N namespace hosts on a private bridge, reachable from this process by address."""

    def __init__(self, count: int, *, key_type: str = "ssh-ed25519") -> None:
        if not 1 <= count <= 250:
            raise ValueError("between 1 and 250 hosts fit one /24")
        self.count = count
        self.key_type = key_type
        self.token = f"{PREFIX}{_b36(os.getpid())}-{_b36(next(_runs))}"
        self.bridge = self.token
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.token}-"))
        self.hosts: list[NetnsHost] = []
        self.subnet: ipaddress.IPv4Network | None = None
        self.client_key = self.dir / "id_test"
        self.known_hosts = self.dir / "known_hosts"
        self.user = USER
        self.up_seconds = 0.0
        self._closed = False

    # --- bring up ----------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> NetnsFleet:
        atexit.register(self.close)
        sweep_stale()
        began = time.monotonic()
        try:
            self._make_bridge()
            client = asyncssh.generate_private_key("ssh-ed25519")
            client.write_private_key(str(self.client_key))
            client.write_public_key(f"{self.client_key}.pub")
            os.chmod(self.client_key, 0o600)
            authorized = client.export_public_key().decode()
            assert self.subnet is not None
            addrs = list(self.subnet.hosts())
            for i in range(self.count):
                h = NetnsHost(name=f"h{i + 1}", address=str(addrs[i]), netns=f"{self.token}-{i + 1}",
                              veth=f"{self.token}v{_b36(i + 1)}", dir=self.dir / f"h{i + 1}")
                self._write_host_files(h, authorized)
                self.hosts.append(h)
            ip_batch([f"netns add {h.netns}" for h in self.hosts])
            ip_batch([line for h in self.hosts for line in (
                f"link add {h.veth} type veth peer name eth0 netns {h.netns}",
                f"link set {h.veth} master {self.bridge} up")])
            for h in self.hosts:
                self._launch(h)
            self.write_known_hosts()
            self._wait_listening(self.hosts, began + timeout)
        except BaseException:
            self.close()
            raise
        self.up_seconds = time.monotonic() - began
        return self

    def _make_bridge(self) -> None:
        lock = os.open(_LOCK_DIR, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = ip("-4", "-o", "addr", "show").stdout + ip("-4", "route", "show", "table", "all").stdout
            third = next((x for x in range(1 + os.getpid() % 200, 255) if f"10.77.{x}." not in used), None) \
                or next(x for x in range(1, 255) if f"10.77.{x}." not in used)
            self.subnet = ipaddress.IPv4Network(f"10.77.{third}.0/24")
            ip("link", "add", self.bridge, "type", "bridge")
            ip("addr", "add", f"10.77.{third}.254/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
        finally:
            os.close(lock)                # releases the flock

    def _write_host_files(self, h: NetnsHost, authorized: str) -> None:
        home = h.dir / "home"
        (home / ".ssh").mkdir(parents=True, mode=0o700)
        (home / ".ssh" / "authorized_keys").write_text(authorized)
        os.chmod(home / ".ssh" / "authorized_keys", 0o600)
        os.chmod(h.dir, 0o755)
        os.chmod(home, 0o700)
        self._new_host_key(h)
        h.sshd_config.write_text("\n".join([
            "Port 22", f"ListenAddress {h.address}", f"HostKey {h.host_key}", "PidFile /run/sshd.pid",
            "AuthorizedKeysFile .ssh/authorized_keys", "PubkeyAuthentication yes",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
            "PermitRootLogin prohibit-password", "PrintMotd no", "PrintLastLog no", "UseDNS no",
            "Subsystem sftp /usr/lib/openssh/sftp-server", "LogLevel VERBOSE", ""]))

    def _new_host_key(self, h: NetnsHost) -> None:
        key = asyncssh.generate_private_key(self.key_type)
        key.write_private_key(str(h.host_key))
        key.write_public_key(f"{h.host_key}.pub")
        os.chmod(h.host_key, 0o600)

    def _launch(self, h: NetnsHost) -> None:
        # pid 1 of the host: sets the host up, starts sshd, then only reaps orphans
        script = "; ".join([
            "set -e", f"hostname {h.name}", "mount -t tmpfs -o mode=0755,size=4m tmpfs /run",
            "mkdir -m 0755 /run/sshd", f"mount --bind {h.dir}/home /root",
            f"printf 'link set lo up\\naddr add {h.address}/24 dev eth0\\nlink set eth0 up\\n' | ip -batch -",
            f"{SSHD} -f {h.sshd_config} -E {h.dir}/sshd.log", "set +e", "trap 'exit 0' TERM",
            "while :; do sleep 1000000 & wait $!; done"])
        h.launcher = subprocess.Popen(
            ["ip", "netns", "exec", h.netns, "unshare", "--pid", "--fork", "--kill-child", "--mount",
             "--uts", "--mount-proc", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(h.dir / "init.err", "wb"),
            start_new_session=True)

    def _init_pid(self, h: NetnsHost) -> int:
        assert h.launcher is not None
        with contextlib.suppress(OSError):
            kids = Path(f"/proc/{h.launcher.pid}/task/{h.launcher.pid}/children").read_text().split()
            if kids:
                return int(kids[0])
        return 0

    def _wait_listening(self, hosts: list[NetnsHost], deadline: float) -> None:
        pending = list(hosts)
        while pending:
            for h in list(pending):
                if not h.init_pid:
                    h.init_pid = self._init_pid(h)
                if h.launcher is not None and h.launcher.poll() is not None:
                    raise RuntimeError(f"test host {h.name} exited while starting: "
                                       f"{(h.dir / 'init.err').read_text()[-2000:]}")
                if h.init_pid and _listening_on_22(h.init_pid):
                    pending.remove(h)
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"sshd did not listen on {[h.name for h in pending]}")
            if pending:
                time.sleep(0.02)

    def write_known_hosts(self) -> None:
        """A known_hosts with every host's current key (what an operator would have)."""
        self.known_hosts.write_text("".join(f"{h.address} {h.public_key_line()}\n" for h in self.hosts))

    # --- faults ------------------------------------------------------------------------------

    def kill_host(self, h: NetnsHost) -> None:
        """Every process of the host dies at once (its pid 1 is killed; the kernel does the rest).
        Its address still answers with a reset: cut_network too for a host that went silent."""
        pids = h.pids()
        if h.init_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(h.init_pid, signal.SIGKILL)
        kill_pids(pids)
        if h.launcher is not None:
            h.launcher.wait(5)

    def cut_network(self, h: NetnsHost) -> None:
        """The host's cable is pulled: packets to and from it vanish, no reset is sent."""
        ip("link", "set", h.veth, "down")

    def restore_network(self, h: NetnsHost) -> None:
        ip("link", "set", h.veth, "up")

    def stop_sshd(self, h: NetnsHost) -> None:
        """Stop the listener only: open SSH connections keep their own sshd processes."""
        pid = h.sshd_listener()
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while running(pid) and time.monotonic() < deadline:
                time.sleep(0.01)

    def start_sshd(self, h: NetnsHost) -> None:
        subprocess.run(["nsenter", "-t", str(h.init_pid), "-a", SSHD, "-f", str(h.sshd_config),
                        "-E", f"{h.dir}/sshd.log"], check=True, capture_output=True)
        self._wait_listening([h], time.monotonic() + 10)

    def restart_sshd(self, h: NetnsHost) -> None:
        self.stop_sshd(h)
        self.start_sshd(h)

    def drop_connections(self, h: NetnsHost) -> list[int]:
        """Kill the sshd serving each open connection to the host (the listener stays)."""
        pids = h.sshd_sessions()
        kill_pids(pids)
        return pids

    def change_host_key(self, h: NetnsHost) -> str:
        """The host is rebuilt with a new key (known_hosts is NOT updated); returns the new line."""
        self._new_host_key(h)
        self.restart_sshd(h)
        return h.public_key_line()

    # --- tear down ---------------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)
        pids = [p for h in self.hosts for p in ([h.init_pid] if h.init_pid else []) + h.pids()]
        pids += [h.launcher.pid for h in self.hosts if h.launcher is not None and h.launcher.poll() is None]
        kill_pids(pids)
        for h in self.hosts:
            if h.launcher is not None:
                with contextlib.suppress(Exception):
                    h.launcher.wait(5)
        remove(made_by(self.token))
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> NetnsFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def netns_hosts(count: int) -> Iterator[NetnsFleet]:
    """`with netns_hosts(5) as fleet:` N hosts up, everything removed afterwards."""
    with NetnsFleet(count) as fleet:
        yield fleet


if __name__ == "__main__":   # timing: cd tests && ../.venv/bin/python -m support.netns_hosts 100
    import sys
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    began = time.monotonic()
    with NetnsFleet(n) as fleet:
        up = fleet.up_seconds
    print(f"{n} hosts: up {up:.2f} s, torn down {time.monotonic() - began - up:.2f} s")
