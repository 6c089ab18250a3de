"""Helpers shared by the integration tests (importable as `support`)."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from shipyard.client import AsyncApiClient

SpecMaker = Callable[..., Path]
"""make_spec("v2", "name", **{"dotted.key": value}) -> path of a spec for this test's port."""


async def deploy(api: AsyncApiClient, spec: Path, timeout: float = 120, allow_unsafe: str = "") -> dict[str, Any]:
    """POST /v1/deploy for `spec` and wait for the rollout to end; returns its final state."""
    body = {"spec_path": str(spec)} | ({"allow_unsafe": allow_unsafe} if allow_unsafe else {})
    r = (await api.post("/v1/deploy", body))["rollout"]
    return await api.wait_rollout(r["id"], timeout)
