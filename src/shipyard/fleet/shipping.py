"""One image to many hosts at once, with a bound on concurrent transfers: each host gets
only the objects its store lacks (fleet/remote/transfer.py); a host that fails (disk full,
unreachable) fails alone, named, and the others go on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from shipyard.errors import ShipyardError
from shipyard.fleet.remote.client import HelperClient
from shipyard.fleet.remote.transfer import Shipped, ship_image
from shipyard.images.store import ImageStore

ClientFor = Callable[[], Awaitable[HelperClient]]
"""How to reach one host's helper (e.g. HelperSession.client): opened only when its turn comes."""


@dataclass
class FleetShipment:
    image_id: str
    shipped: dict[str, Shipped] = field(default_factory=dict)
    failed: dict[str, ShipyardError] = field(default_factory=dict)
    peak_transfers: int = 0
    """The most hosts that were being sent to at once (never above the bound)."""

    @property
    def bytes_sent(self) -> int:
        return sum(s.bytes_sent for s in self.shipped.values())


async def ship_everywhere(hosts: Mapping[str, ClientFor], images: ImageStore, image_id: str,
                          max_transfers: int) -> FleetShipment:
    """Ship `image_id` to every host, at most `max_transfers` at once."""
    if max_transfers < 1:
        raise ValueError("max_transfers must be at least 1")
    out = FleetShipment(images.get(image_id).id)
    slots = asyncio.Semaphore(max_transfers)
    in_flight = 0

    async def one(name: str, client_for: ClientFor) -> None:
        nonlocal in_flight
        async with slots:
            in_flight += 1
            out.peak_transfers = max(out.peak_transfers, in_flight)
            try:
                out.shipped[name] = await ship_image(await client_for(), images, out.image_id)
            except ShipyardError as e:
                out.failed[name] = e
            finally:
                in_flight -= 1

    await asyncio.gather(*(one(n, c) for n, c in hosts.items()))
    return out
