"""Fixtures for the fleet tests: namespace hosts with real sshd (tests/support/netns_hosts.py),
removed after each test even when it fails (and checked to be gone)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ssh_support import need_namespaces

from support.netns_hosts import NetnsFleet, made_by


@pytest.fixture
def fleet5() -> Iterator[NetnsFleet]:
    need_namespaces()
    with NetnsFleet(5) as fleet:
        yield fleet
    left = made_by(fleet.token)
    assert left == {"netns": [], "links": [], "dirs": [], "processes": []}, f"the test hosts left {left}"


@pytest.fixture
def fleet1() -> Iterator[NetnsFleet]:
    need_namespaces()
    with NetnsFleet(1) as fleet:
        yield fleet
    left = made_by(fleet.token)
    assert left == {"netns": [], "links": [], "dirs": [], "processes": []}, f"the test host left {left}"
