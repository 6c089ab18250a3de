"""Which host runs which instance slot: the desired assignment for the hosts as they are now.

Pure: hosts, the spec's placement and the current assignment in, the desired assignment out.
A slot is one instance's place, numbered; a slot that stays on its host keeps its number, and
a slot whose host is lost, draining, gone or over its share keeps its number on the host it
moves to, so "slot 3 moved from web-2 to web-5" is what a replacement looks like.

The spread is even first (across the spread label's values, then across the hosts of each
value; max - min <= 1 unless a host is at max_per_host), and among the even spreads the one
that keeps the most slots where they are. Ties are broken by name, so the answer depends only
on the input, never on its order."""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from shipyard.errors import ShipyardError
from shipyard.spec.fleet import PlacementSpec


class PlacementError(ShipyardError):
    """The placement cannot be met by the hosts that are usable now."""


class HostState(StrEnum):
    UP = "up"
    DRAINING = "draining"
    """Being emptied before maintenance: keeps running what it has until it is moved, gets nothing new."""
    LOST = "lost"


@dataclass(frozen=True)
class PlacementHost:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    state: HostState = HostState.UP


@dataclass(frozen=True)
class Assignment:
    """Slot number -> host name."""

    slots: Mapping[int, str]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for host in self.slots.values():
            out[host] = out.get(host, 0) + 1
        return dict(sorted(out.items()))

    def on(self, host: str) -> list[int]:
        return sorted(slot for slot, h in self.slots.items() if h == host)


@dataclass(frozen=True)
class Changes:
    """What turns one assignment into another: slots kept, moved (from, to), added, removed."""

    kept: Mapping[int, str]
    moved: Mapping[int, tuple[str, str]]
    added: Mapping[int, str]
    removed: Mapping[int, str]


def changes(current: Mapping[int, str], desired: Assignment) -> Changes:
    new = desired.slots
    return Changes(
        kept={s: h for s, h in sorted(current.items()) if new.get(s) == h},
        moved={s: (h, new[s]) for s, h in sorted(current.items()) if s in new and new[s] != h},
        added={s: h for s, h in sorted(new.items()) if s not in current},
        removed={s: h for s, h in sorted(current.items()) if s not in new},
    )


def place(hosts: Sequence[PlacementHost], placement: PlacementSpec, current: Mapping[int, str]) -> Assignment:
    """The desired assignment; PlacementError when the usable hosts cannot meet `placement`."""
    names = [h.name for h in hosts]
    if len(set(names)) != len(names):
        raise ValueError(f"host names must be unique, got {names}")
    usable = sorted((h for h in hosts if h.state is HostState.UP), key=lambda h: h.name)
    if not usable:
        states = ", ".join(f"{h.name} {h.state.value}" for h in sorted(hosts, key=lambda h: h.name)) or "none"
        raise PlacementError(f"no host can take instances (hosts: {states})",
                             "bring a host back, or add one to fleet.hosts")
    on_host: dict[str, list[int]] = {h.name: [] for h in usable}
    for slot, host in sorted(current.items()):
        if host in on_host:
            on_host[host].append(slot)
    quota = _quota(usable, placement, {h: len(s) for h, s in on_host.items()})
    desired: dict[int, str] = {}
    freed: list[int] = []
    for host, slots in on_host.items():
        desired.update((slot, host) for slot in slots[:quota[host]])
        freed += slots[quota[host]:]
    freed += [slot for slot, host in current.items() if host not in on_host]
    fresh = _numbers(sorted(freed), set(current))
    for host in sorted(quota):
        for _ in range(quota[host] - min(quota[host], len(on_host[host]))):
            desired[next(fresh)] = host
    return Assignment(dict(sorted(desired.items())))


def _numbers(first: list[int], taken: set[int]) -> Iterator[int]:
    """Slot numbers to give out: the freed ones (lowest first), then the lowest never used."""
    yield from first
    n = 0
    while True:
        if n not in taken:
            yield n
        n += 1


def _quota(usable: list[PlacementHost], placement: PlacementSpec, held: dict[str, int]) -> dict[str, int]:
    if placement.per_host is not None:
        return {h.name: placement.per_host for h in usable}
    assert placement.total is not None
    total, cap = placement.total, placement.max_per_host
    if cap is not None and total > cap * len(usable):
        raise PlacementError(f"placement.total {total} does not fit on the {len(usable)} usable host(s) at "
                             f"max_per_host {cap} (at most {cap * len(usable)})",
                             "bring hosts back or add hosts, or lower total / raise max_per_host")
    groups: dict[str, list[str]] = {}
    for host in usable:
        if placement.spread is None:
            key = host.name
        elif placement.spread in host.labels:
            key = host.labels[placement.spread]
        else:
            raise PlacementError(f"host {host.name} has no label {placement.spread!r} to spread by",
                                 f"give every host the label {placement.spread}")
        groups.setdefault(key, []).append(host.name)
    fillers = [_Filler(i, key, members, cap, held) for i, (key, members) in enumerate(sorted(groups.items()))]
    heap = [f.key() for f in fillers]
    heapq.heapify(heap)
    for _ in range(total):
        *_, i = heapq.heappop(heap)          # never empty: total fits (checked above, or no cap)
        fillers[i].take()
        if not fillers[i].full():
            heapq.heappush(heap, fillers[i].key())
    return {host: n for f in fillers for host, n in f.given.items()}


class _Filler:
    """One spread group, filled one instance at a time onto its least loaded host (preferring
    a host that already runs more than it was given, so that instance stays)."""

    def __init__(self, index: int, name: str, members: list[str], cap: int | None, held: dict[str, int]) -> None:
        self.index = index
        self.name = name
        self.cap = cap
        self.held = held
        self.given = {host: 0 for host in members}
        self.total = 0
        self.heap = [self._host_key(h) for h in members]
        heapq.heapify(self.heap)

    def _host_key(self, host: str) -> tuple[int, int, str]:
        n = self.given[host]
        return (n, 0 if n < self.held[host] else 1, host)

    def full(self) -> bool:
        return not self.heap

    def key(self) -> tuple[int, int, str, int]:
        """Fewest given first; then the group whose next instance would stay where it runs."""
        _, stays, _ = self.heap[0]
        return (self.total, stays, self.name, self.index)

    def take(self) -> None:
        _, _, host = heapq.heappop(self.heap)
        self.given[host] += 1
        self.total += 1
        if self.cap is None or self.given[host] < self.cap:
            heapq.heappush(self.heap, self._host_key(host))
