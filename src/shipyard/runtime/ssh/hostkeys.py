"""Host key checks against the fleet's known_hosts file, and the one audited exception:
`trust_new_hosts` records a never-seen host's first key (never a changed one)."""

from __future__ import annotations

import fcntl
import time
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from shipyard.runtime.ssh.errors import HostKeyChanged, HostKeyUnknown


@dataclass(frozen=True)
class TrustedKey:
    """The fact a caller must audit: a first-seen key was written to known_hosts."""

    host: str
    address: str
    port: int
    key_type: str
    fingerprint: str
    known_hosts: str
    at: float


def describe(key: asyncssh.SSHKey) -> str:
    return f"{key.get_algorithm()} {key.get_fingerprint('sha256')}"


def pattern(address: str, port: int) -> str:
    """How OpenSSH names a host in known_hosts."""
    return address if port == 22 else f"[{address}]:{port}"


def read_known_hosts(path: Path) -> asyncssh.SSHKnownHosts:
    """The file parsed (hashed names, markers and [host]:port patterns as OpenSSH reads them);
    a missing file is an empty one: every host is then unknown."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    return asyncssh.import_known_hosts(text)


def known_keys(known: asyncssh.SSHKnownHosts, address: str, port: int) -> list[asyncssh.SSHKey]:
    return list(known.match(address, address, None if port == 22 else port)[0])


class HostKeyCheck:
    """One connection attempt's decision: asyncssh asks `accept` about a key known_hosts does
    not list; the refusal (or the key to record) is kept for the caller to act on."""

    def __init__(self, host: str, address: str, port: int, path: Path, trust_new: bool) -> None:
        self.host, self.address, self.port, self.path, self.trust_new = host, address, port, path, trust_new
        self.known = read_known_hosts(path)
        self.expected = known_keys(self.known, address, port)
        self.refusal: HostKeyUnknown | HostKeyChanged | None = None
        self.to_record: asyncssh.SSHKey | None = None

    def accept(self, key: asyncssh.SSHKey) -> bool:
        if self.expected:
            self.refusal = self.changed(describe(key))
            return False
        if not self.trust_new:
            self.refusal = HostKeyUnknown(
                self.host,
                f"host {self.host} ({pattern(self.address, self.port)}) is not in {self.path}: it presented "
                f"{describe(key)}; refused, nothing was sent to it",
                "check that fingerprint on the host itself (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub) and add "
                "its key to known_hosts, or set fleet.ssh.trust_new_hosts: true for a first contact (recorded "
                "in the audit log)")
            return False
        self.to_record = key
        return True

    def changed(self, presented: str) -> HostKeyChanged:
        listed = ", ".join(describe(k) for k in self.expected)
        return HostKeyChanged(
            self.host,
            f"host key of {self.host} ({pattern(self.address, self.port)}) has CHANGED: known_hosts "
            f"{self.path} lists {listed}, the host presented {presented}; refused, nothing was sent to it",
            "if the host was rebuilt, verify the new fingerprint on it and replace its line in known_hosts "
            f"(ssh-keygen -R {pattern(self.address, self.port)} -f {self.path}); otherwise someone may be "
            "intercepting the connection. trust_new_hosts never accepts a changed key")

    def record(self) -> TrustedKey | None:
        """After the handshake proved the host holds the key: append it, under a lock so that
        concurrent first contacts (this process or another) neither interleave nor disagree."""
        key = self.to_record
        if key is None:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            text = f.read()
            listed = known_keys(asyncssh.import_known_hosts(text), self.address, self.port)
            if key in listed:
                return None
            if listed:
                self.expected = listed
                raise self.changed(describe(key))
            line = " ".join(key.export_public_key().decode().split()[:2])
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            f.write(("" if not text or text.endswith("\n") else "\n")
                    + f"{pattern(self.address, self.port)} {line} shipyard trust_new_hosts {self.host} {stamp}\n")
            f.flush()
        return TrustedKey(self.host, self.address, self.port, key.get_algorithm(),
                          key.get_fingerprint("sha256"), str(self.path), time.time())
