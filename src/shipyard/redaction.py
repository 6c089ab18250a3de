"""Secrets out of what is shown or stored: database URLs without passwords, evidence with
secret-looking values masked. Pure string helpers shared by the plan (rollout/), the
database library, the audit log, notifications and the dashboard, so none of them needs
to import another's module (or the PostgreSQL driver) to stay secret-free."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

_SECRET_KEY = re.compile(r"(?i)^(token|password|passwd|secret|authorization|api[_-]?key)$")
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:
        return "<unparseable database URL>"
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))


def scrub(value: Any) -> Any:
    """Evidence without secrets: values under secret-looking keys masked, URL passwords removed."""
    if isinstance(value, dict):
        return {k: "***" if _SECRET_KEY.match(str(k)) and v else scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1***@", value)
    return value
