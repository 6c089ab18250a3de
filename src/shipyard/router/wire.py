"""The control protocol's wire format, shared by the daemon's client and the router process.

Newline-delimited JSON objects, one response per request. It lives apart from both
sides so that the data plane (router/dataplane/) and the daemon-side client
(router/control_client.py) agree on framing without importing each other."""

from __future__ import annotations

import json
from typing import Any

MAX_LINE = 16 * 1024 * 1024
"""A table of a large fleet is still far below this; anything bigger is a bug."""


def encode_line(obj: dict[str, Any]) -> bytes:
    """One message: compact JSON and the newline that ends it."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def error_reply(message: str) -> dict[str, Any]:
    """A refusal as the client expects it: ok false and a sentence saying why."""
    return {"ok": False, "error": message}
