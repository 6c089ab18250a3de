"""One image to one host: only the objects the host's store lacks travel (a release that
changes one file sends one file), then the host materialises the tree from its own store.
Controller side (never bundled). Fanning out to many hosts with a bound on concurrent
transfers is the caller's: this is the per-host step.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from shipyard.errors import ImageError
from shipyard.images.manifest import canonical_json
from shipyard.images.objects import ObjectStore
from shipyard.images.store import ImageStore

from .client import HelperClient, HelperError
from .protocol import CORRUPTED, HASH_MISMATCH, MISSING_OBJECTS

WINDOW = 8
"""Puts in flight on one channel: hides the round trip, the helper still stores one at a time."""


@dataclass(frozen=True)
class Shipped:
    image_id: str
    tree: str
    created: bool
    objects_total: int
    objects_sent: int
    bytes_sent: int


async def _send(client: HelperClient, objects: ObjectStore, sizes: dict[str, int], shas: list[str]) -> int:
    window = asyncio.Semaphore(WINDOW)

    async def one(sha: str) -> int:
        async with window:
            try:
                stored = await client.put(sha, objects.path(sha))
            except FileNotFoundError:
                raise ImageError(f"object {sha[:12]} is missing from the local image store",
                                 hint="rebuild the image to restore its objects") from None
            except HelperError as exc:
                if exc.code == HASH_MISMATCH:
                    raise ImageError(f"object {sha[:12]} in the local image store is corrupted",
                                     hint="rebuild the image to restore its objects") from None
                raise
            return sizes[sha] if stored else 0

    return sum(await asyncio.gather(*(one(s) for s in shas)))


async def ship_image(client: HelperClient, images: ImageStore, image_id: str) -> Shipped:
    """Send what the host lacks and materialise the tree there; once more if the host found
    some of its objects corrupted (it drops them and names them)."""
    image = images.get(image_id)
    objects = ObjectStore(images.root / "objects")
    sizes = {e["sha256"]: int(e["size"]) for e in image.manifest["files"] if e["type"] == "file"}
    manifest_bytes = canonical_json(image.manifest)
    lacking = await client.missing(sorted(sizes))
    sent_objects, sent_bytes = len(lacking), await _send(client, objects, sizes, lacking)
    for attempt in (1, 2):
        try:
            result: dict[str, Any] = await client.materialize(image.id, manifest_bytes)
            break
        except HelperError as exc:
            again = exc.details.get("objects") or []
            if attempt == 2 or exc.code not in (CORRUPTED, MISSING_OBJECTS) or not again:
                raise
            sent_objects += len(again)
            sent_bytes += await _send(client, objects, sizes, list(again))
    return Shipped(image.id, result["tree"], bool(result["created"]), len(sizes), sent_objects, sent_bytes)
