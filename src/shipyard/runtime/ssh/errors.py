"""What can go wrong talking to a host over SSH, each saying which host and what to do."""

from __future__ import annotations

from shipyard.errors import ShipyardError


class SshError(ShipyardError):
    """A fleet host cannot be used over SSH right now."""

    def __init__(self, host: str, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.host = host


class HostKeyRefused(SshError):
    """The host's key is not one known_hosts trusts for it: nothing was sent to it."""


class HostKeyUnknown(HostKeyRefused):
    """First contact with a host whose key known_hosts does not list (and trust_new_hosts is off)."""


class HostKeyChanged(HostKeyRefused):
    """known_hosts lists a different key for the host: it was rebuilt, or someone is in the middle."""


class SshIdentityError(SshError):
    """The identity file of the fleet's ssh section cannot be used (missing, unreadable, encrypted)."""


class SshAuthFailed(SshError):
    """The host refused the identity (the public key is not in the user's authorized_keys)."""


class HostUnreachable(SshError):
    """No SSH connection to the host could be made within the time allowed; retries continue."""


class SshConnectionLost(SshError):
    """The connection dropped while a command or channel was using it: its outcome is unknown."""


class SshCommandTimeout(SshError):
    """A remote command did not finish within its timeout and was killed."""
