"""What a webhook receives: shipyard's own JSON body, or a Slack-compatible message.

Bodies are scrubbed here, the last place before they leave the machine: values under
secret-looking keys, URL passwords and the daemon's secret values themselves."""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any, Literal

from shipyard import __version__
from shipyard.notify.events import Notification
from shipyard.redaction import scrub

REDACTED = "***"
MIN_SECRET = 4
"""Shorter secret values are not searched for: replacing every "ab" would garble messages."""


def json_body(n: Notification) -> dict[str, Any]:
    return {"event": n.event, "service": n.service, "rollout_id": n.rollout_id, "phase": n.phase,
            "message": n.message, "data": n.data, "ts": n.ts, "id": n.event_id,
            "shipyard_version": __version__}


def slack_body(n: Notification) -> dict[str, Any]:
    """Slack's incoming-webhook shape (`text` is the fallback and what Mattermost and
    friends read; `blocks` is the richer rendering)."""
    title = f"{n.service}: {n.event}"
    text = f"[{title}] {n.message}"
    context = [f"rollout {n.rollout_id}" if n.rollout_id else "", f"phase {n.phase}" if n.phase else "",
               time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(n.ts)), f"shipyard {__version__}"]
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{_escape(title)}*\n{_escape(n.message)}"}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": _escape(" · ".join(c for c in context if c))}]},
        ],
    }


def render(n: Notification, fmt: Literal["json", "slack"], secrets: Collection[str] = ()) -> dict[str, Any]:
    body = slack_body(n) if fmt == "slack" else json_body(n)
    return hide(body, secrets)


def hide(value: Any, secrets: Collection[str]) -> Any:
    """`value` with every secret value replaced, wherever it appears in a string."""
    value = scrub(value)
    needles = sorted((s for s in secrets if len(s) >= MIN_SECRET), key=len, reverse=True)
    if not needles:
        return value
    return _replace(value, needles)


def _replace(value: Any, needles: list[str]) -> Any:
    if isinstance(value, dict):
        return {_replace(k, needles): _replace(v, needles) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, needles) for v in value]
    if isinstance(value, str):
        for s in needles:
            value = value.replace(s, REDACTED)
    return value


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
