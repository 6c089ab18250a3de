"""One HTTP delivery attempt to a webhook, and whether trying again could help."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from shipyard import __version__

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Outcome:
    ok: bool
    retry: bool
    detail: str
    status: int | None = None


def safe_url(url: str) -> str:
    """How a webhook is named in events and logs: its path often is the credential (Slack)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}/…"


async def post(client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: Mapping[str, str],
               timeout: float) -> Outcome:
    """`timeout` bounds the whole attempt (connect, send, a receiver that answers byte by byte)."""
    content = json.dumps(body, separators=(",", ":"), default=str).encode()
    all_headers = {"Content-Type": "application/json", "User-Agent": f"shipyard/{__version__}", **headers}
    try:
        async with asyncio.timeout(timeout):
            resp = await client.post(url, content=content, headers=all_headers, timeout=timeout)
            await resp.aread()
    except TimeoutError:
        return Outcome(False, True, f"no answer within {timeout:g}s")
    except httpx.HTTPError as e:
        why = str(e).replace(url, safe_url(url))
        return Outcome(False, True, f"{type(e).__name__}: {why}" if why else type(e).__name__)
    if 200 <= resp.status_code < 300:
        return Outcome(True, False, f"HTTP {resp.status_code}", resp.status_code)
    return Outcome(False, resp.status_code in RETRYABLE_STATUS, f"HTTP {resp.status_code}", resp.status_code)
