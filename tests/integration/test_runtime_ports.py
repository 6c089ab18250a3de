"""Port allocation: free ports, never the same one twice in a row."""

from __future__ import annotations

import socket

import pytest

from shipyard.runtime import ports as ports_mod
from shipyard.runtime.ports import PortAllocator


def test_port_allocator_hands_out_free_distinct_ports() -> None:
    alloc = PortAllocator()
    ports = [alloc.allocate("127.0.0.1") for _ in range(50)]
    assert len(set(ports)) == 50
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))  # really free


def test_port_allocator_never_repeats_a_recent_port(monkeypatch: pytest.MonkeyPatch) -> None:
    offered = iter([41000, 41000, 41000, 41001])
    monkeypatch.setattr(ports_mod, "_free_port", lambda host: next(offered))
    alloc = PortAllocator()
    assert alloc.allocate() == 41000
    assert alloc.allocate() == 41001


def test_port_allocator_forgets_after_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports_mod, "_free_port", lambda host: 41000)
    alloc = PortAllocator(recent_seconds=0.0)
    assert alloc.allocate() == 41000
    assert alloc.allocate() == 41000  # the window is over: the kernel's answer is trusted again
    stuck = PortAllocator()
    stuck.allocate()
    with pytest.raises(ports_mod.RuntimeFailure, match="could not find a free TCP port"):
        stuck.allocate()


def test_ports_chosen_by_a_host_share_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """A remote host picks its own ports (host.free_port); the allocator remembers them per
    host so the next pick there avoids them, and a local allocation of that number too."""
    alloc = PortAllocator()
    alloc.note("10.0.0.5", 41000)
    alloc.note("10.0.0.5", 41002)
    alloc.note("10.0.0.6", 41001)
    assert alloc.recent("10.0.0.5") == [41000, 41002] and alloc.recent("10.0.0.6") == [41001]
    offered = iter([41000, 41003])
    monkeypatch.setattr(ports_mod, "_free_port", lambda host: next(offered))
    assert alloc.allocate("10.0.0.5") == 41003
    assert PortAllocator(recent_seconds=0.0).recent("10.0.0.5") == []
    gone = PortAllocator(recent_seconds=0.0)
    gone.note("10.0.0.5", 41000)
    assert gone.recent("10.0.0.5") == []   # the window is over
