"""Who listens on a TCP port: the kernel's socket tables (/proc/net/tcp, tcp6) give the
listening sockets and their inodes, each process's /proc/<pid>/fd links give the owners."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

LISTEN = "0A"
TABLES = (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6))


@dataclass(frozen=True)
class Listener:
    address: str
    port: int
    inode: int


def _address(hex_addr: str, family: int) -> str:
    # The kernel prints the address as 32-bit words in host (little-endian) order.
    raw = b"".join(bytes.fromhex(hex_addr[i : i + 8])[::-1] for i in range(0, len(hex_addr), 8))
    return socket.inet_ntop(family, raw)


def parse_lines(lines: Iterable[str], family: int) -> Iterator[Listener]:
    """The LISTEN sockets among table lines (no header). The table lists every TCP socket of
    the namespace, tens of thousands on a loaded machine (mostly TIME_WAIT), so it is read
    as a stream and only LISTEN lines are split in full: reading it whole cost 8 MB of
    transient strings per scan, which left the daemon's heap a little larger each time the
    machine had more sockets than before (issue 13's soak)."""
    for line in lines:
        head = line.split(None, 4)
        if len(head) < 5 or head[3] != LISTEN:
            continue
        fields = line.split()
        if len(fields) < 10:
            continue
        addr, _, port = fields[1].partition(":")
        yield Listener(_address(addr, family), int(port, 16), int(fields[9]))


def parse_table(text: str, family: int) -> list[Listener]:
    return list(parse_lines(text.splitlines()[1:], family))


def listening_sockets(ports: Iterable[int] | None = None) -> list[Listener]:
    """TCP sockets in LISTEN state (on ``ports`` only, when given), IPv4 and IPv6."""
    wanted = set(ports) if ports is not None else None
    found: list[Listener] = []
    for path, family in TABLES:
        try:
            with open(path) as table:
                next(table, None)   # the header
                found.extend(s for s in parse_lines(table, family) if wanted is None or s.port in wanted)
        except FileNotFoundError:
            continue  # no IPv6 on this machine
    return found


@dataclass
class Owners:
    by_inode: dict[int, list[int]] = field(default_factory=dict)
    unreadable: list[int] = field(default_factory=list)
    """Pids whose descriptors we may not list: any of them could own a socket we could not place."""


def socket_owners(inodes: Iterable[int]) -> Owners:
    targets = {f"socket:[{i}]": i for i in inodes}
    owners = Owners({i: [] for i in targets.values()})
    if not targets:
        return owners
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fd_dir = f"/proc/{name}/fd"
        try:
            fds = os.listdir(fd_dir)
        except (FileNotFoundError, ProcessLookupError):
            continue
        except PermissionError:
            owners.unreadable.append(int(name))
            continue
        for fd in fds:
            try:
                link = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            inode = targets.get(link)
            if inode is not None and int(name) not in owners.by_inode[inode]:
                owners.by_inode[inode].append(int(name))
    return owners
