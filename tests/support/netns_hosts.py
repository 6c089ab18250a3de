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
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

PREFIX = "synh"
SSHD = "/usr/sbin/sshd"
USER = "root"
_NAME = re.compile(rf"^{PREFIX}([0-9a-z]+)-([0-9a-z]+)")
_LOCK = Path(tempfile.gettempdir()) / f"{PREFIX}.lock"
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


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def _ip_batch(lines: list[str]) -> None:
    """One `ip` process for many commands: 100 hosts come up without 500 forks."""
    if lines:
        subprocess.run(["ip", "-force", "-batch", "-"], input="\n".join(lines) + "\n",
                       capture_output=True, text=True, check=True)


def _pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _kill_pids(pids: list[int], timeout: float = 5.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(running(p) for p in pids):
        time.sleep(0.02)


def running(pid: int) -> bool:
    """Alive and not a zombie (a zombie holds no resources; its parent reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def leftovers(owner_alive: bool | None = None, owner: int | None = None) -> dict[str, list[str]]:
    """Namespaces, links, temp dirs and processes made by this module (optionally only those
    of a dead owner, or of one owner pid)."""
    def wanted(name: str) -> bool:
        m = _NAME.match(name)
        if not m:
            return False
        pid = int(m.group(1), 36)
        if owner is not None and pid != owner:
            return False
        return owner_alive is None or _pid_alive(pid) == owner_alive
    netns = [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.strip()]
    links = [line.split(":")[1].strip().split("@")[0]
             for line in _ip("-o", "link", "show", check=False).stdout.splitlines()]
    tmp = Path(tempfile.gettempdir())
    dirs = [str(p) for p in tmp.glob(f"{PREFIX}*") if p.is_dir() and wanted(p.name)]
    procs = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            cmd = _cmdline(int(entry))
            m = re.search(rf"{re.escape(str(tmp))}/({PREFIX}[0-9a-z]+-[0-9a-z]+)", cmd)
            if m and wanted(m.group(1)) and running(int(entry)):
                procs.append(entry)
    return {"netns": [n for n in netns if wanted(n)], "links": [n for n in links if wanted(n)],
            "dirs": dirs, "processes": procs}


def sweep_stale() -> dict[str, list[str]]:
    """Remove what runs that died without cleaning up left behind; returns what it removed."""
    found = leftovers(owner_alive=False)
    _remove(found)
    return found


def _remove(found: dict[str, list[str]]) -> None:
    pids = [int(p) for p in found["processes"]]
    for ns in found["netns"]:
        pids += [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split()]
    _kill_pids(pids)
    _ip_batch([f"netns del {ns}" for ns in found["netns"]])
    for link in found["links"]:
        _ip("link", "del", link, check=False)
    for d in found["dirs"]:
        shutil.rmtree(d, ignore_errors=True)


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
        return next((p for p in self.pids() if "[listener]" in _cmdline(p)), None)

    def sshd_sessions(self) -> list[int]:
        """The per-connection sshd monitors: killing one drops that SSH connection."""
        return [p for p in self.pids() if _cmdline(p).startswith("sshd: ") and "[listener]" not in _cmdline(p)]


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
            _ip_batch([f"netns add {h.netns}" for h in self.hosts])
            _ip_batch([line for h in self.hosts for line in (
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
        with open(_LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = _ip("-4", "-o", "addr", "show").stdout + _ip("-4", "route", "show", "table", "all").stdout
            third = next((x for x in range(1 + os.getpid() % 200, 255) if f"10.77.{x}." not in used), None) \
                or next(x for x in range(1, 255) if f"10.77.{x}." not in used)
            self.subnet = ipaddress.IPv4Network(f"10.77.{third}.0/24")
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"10.77.{third}.254/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")

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
        _kill_pids(pids)
        if h.launcher is not None:
            h.launcher.wait(5)

    def cut_network(self, h: NetnsHost) -> None:
        """The host's cable is pulled: packets to and from it vanish, no reset is sent."""
        _ip("link", "set", h.veth, "down")

    def restore_network(self, h: NetnsHost) -> None:
        _ip("link", "set", h.veth, "up")

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
        _kill_pids(pids)
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
        _kill_pids(pids)
        for h in self.hosts:
            if h.launcher is not None:
                with contextlib.suppress(Exception):
                    h.launcher.wait(5)
        _remove(made_by(self.token))
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> NetnsFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def made_by(token: str) -> dict[str, list[str]]:
    """What one fleet made (run 1's token is a prefix of run 10's: the next character decides)."""
    def owned(name: str) -> bool:
        name = Path(name).name
        return name == token or (name.startswith(token) and name[len(token)] in "v-")
    found = leftovers()
    return {"netns": [n for n in found["netns"] if owned(n)], "links": [n for n in found["links"] if owned(n)],
            "dirs": [d for d in found["dirs"] if owned(d)],
            "processes": [p for p in found["processes"] if f"/{token}-" in _cmdline(int(p))]}


@contextlib.contextmanager
def netns_hosts(count: int) -> Iterator[NetnsFleet]:
    """`with netns_hosts(5) as fleet:` N hosts up, everything removed afterwards."""
    with NetnsFleet(count) as fleet:
        yield fleet


if __name__ == "__main__":   # timing: python tests/support/netns_hosts.py 100
    import sys
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    began = time.monotonic()
    with NetnsFleet(n) as fleet:
        up = fleet.up_seconds
    print(f"{n} hosts: up {up:.2f} s, torn down {time.monotonic() - began - up:.2f} s")
