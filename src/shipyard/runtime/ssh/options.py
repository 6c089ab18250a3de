"""How shipyard reaches the fleet's hosts: the spec's `fleet.ssh` section (user, identity,
port, known_hosts, trust_new_hosts) plus the transport's tuning, and the identity read once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from shipyard.runtime.ssh.backoff import BackoffPolicy
from shipyard.runtime.ssh.errors import SshIdentityError
from shipyard.spec.fleet import FleetSpec, SshSpec


@dataclass(frozen=True)
class SshTarget:
    """A host as the inventory names it."""

    name: str
    address: str
    port: int | None = None
    """None: the ssh section's port."""


@dataclass(frozen=True)
class SshOptions:
    """The fleet spec's `ssh:` section (user, identity, port, known_hosts, trust_new_hosts)
    plus the transport's tuning, with defaults meant for real fleets."""

    user: str
    known_hosts: Path
    identity: Path | None = None
    """None: asyncssh's default keys under ~/.ssh (no agent, no password ever)."""
    port: int = 22
    trust_new_hosts: bool = False
    connect_timeout: float = 10.0
    keepalive_interval: float = 5.0
    keepalive_count_max: int = 3
    """A silent host (cable pulled) is declared dropped after interval * count_max seconds."""
    reconnect_wait: float = 10.0
    """How long a new call waits for a dropped or not yet made connection."""
    max_connects: int = 32
    """SSH handshakes in progress at once across all hosts."""
    max_sessions: int = 10
    """Channels open at once per connection: OpenSSH's default MaxSessions."""
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)


def load_identity(options: SshOptions) -> list[asyncssh.SSHKey] | None:
    """The private key, read once: a bad identity is a configuration error, not a host's fault."""
    if options.identity is None:
        return None
    path = options.identity.expanduser()
    try:
        return [asyncssh.read_private_key(str(path))]
    except FileNotFoundError:
        problem = "does not exist"
    except PermissionError:
        problem = "cannot be read by this user"
    except (asyncssh.KeyImportError, ValueError) as e:
        problem = ("is protected by a passphrase, which shipyard cannot ask for" if "assphrase" in str(e)
                   else f"is not a private key shipyard can use ({e})")
    raise SshIdentityError("*", f"the SSH identity {path} of fleet.ssh.identity {problem}",
                           "point fleet.ssh.identity at an unencrypted private key readable by the daemon "
                           "(a deploy key, e.g. ssh-keygen -t ed25519 -N '' -f ~/.ssh/shipyard_deploy)")


def _spec_path(value: str, base_dir: Path) -> Path:
    """A path as the spec file means it: ~/... is the daemon user's home, a relative one is
    relative to the spec file's directory (not to wherever the daemon was started)."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def options_from_spec(ssh: SshSpec, base_dir: Path, **tuning: Any) -> SshOptions:
    """The spec's `fleet.ssh` section as SshOptions; `tuning` overrides transport defaults
    (timeouts, keepalive, backoff) that the spec does not expose."""
    return SshOptions(user=ssh.user, identity=_spec_path(ssh.identity, base_dir),
                      known_hosts=_spec_path(ssh.known_hosts, base_dir), port=ssh.port,
                      trust_new_hosts=ssh.trust_new_hosts, **tuning)


def targets_from_spec(fleet: FleetSpec) -> list[SshTarget]:
    """Every inventory host as an SshTarget (the port is always the ssh section's)."""
    return [SshTarget(h.name, h.address) for h in fleet.hosts or []]
