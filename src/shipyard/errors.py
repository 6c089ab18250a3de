"""Errors a user can hit. Each says what is wrong and what to do; the CLI prints them
without a traceback and exits with `exit_code`."""

from __future__ import annotations


class ShipyardError(Exception):
    """Base of every user-facing failure."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class SpecError(ShipyardError):
    """The spec file is missing, unparsable or invalid."""

    exit_code = 2


class CertificateError(SpecError):
    """A spec's TLS certificate or key cannot be served (unreadable, not PEM, encrypted,
    mismatched, expired or not yet valid): refused before anything changes."""


class ImageError(ShipyardError):
    """An image cannot be built, found or verified."""


class ImageVerificationError(ImageError):
    """An image tree no longer matches its manifest: it must not run."""


class RuntimeFailure(ShipyardError):
    """An instance could not be started or stopped."""


class RouterError(ShipyardError):
    """The router process cannot be reached or refused a table."""


class ConflictError(ShipyardError):
    """The request conflicts with work in progress (e.g. a rollout already running)."""

    exit_code = 3


class NotFoundError(ShipyardError):
    """A service, image or rollout does not exist."""

    exit_code = 4


class DaemonUnavailable(ShipyardError):
    """The CLI cannot reach the daemon."""

    exit_code = 5


class RequestTooLarge(ShipyardError):
    """A request to the API is bigger than it accepts (HTTP 413); refused before it is read whole."""


class StoreUnavailable(ShipyardError):
    """The state database cannot be read or written right now (disk full, locked by another
    process, read-only, I/O error). Nothing was changed; the daemon retries on its own, so
    the API answers 503 and a caller may try again once the cause is cleared."""

    exit_code = 6

    CAUSES = ("disk_full", "locked", "read_only", "cannot_open", "damaged", "io_error", "unavailable")
    """What `cause` may be: the label of shipyard_store_refusals_total in /metrics."""

    def __init__(self, message: str, hint: str | None = None, cause: str = "unavailable") -> None:
        super().__init__(message, hint)
        self.cause = cause
