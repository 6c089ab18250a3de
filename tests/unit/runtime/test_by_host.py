"""The dispatching runtime sends an instance on a fleet host to the SSH runtime and every
other one to the local runtime; an engine without a fleet refuses a fleet spec with a reason."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shipyard.engine.ports import NoFleet
from shipyard.errors import RuntimeFailure
from shipyard.rollout.records import Instance
from shipyard.runtime.by_host import ByHostRuntime
from shipyard.spec.fleet import FleetSpec


class Recorder:
    def __init__(self, hosts: set[str]) -> None:
        self.hosts = hosts
        self.calls: list[tuple[str, str]] = []

    def knows(self, address: str) -> bool:
        return address in self.hosts

    def is_alive(self, instance: Instance) -> bool:
        self.calls.append(("is_alive", instance.host))
        return True

    def exit_code(self, instance: Instance) -> int | None:
        self.calls.append(("exit_code", instance.host))
        return 3


def inst(host: str) -> Instance:
    return Instance("shop-blue-1", "shop", "blue", "img", host, 8000, 10, 20, "/log", "/data")


def test_calls_go_by_the_instances_host() -> None:
    local, ssh = Recorder(set()), Recorder({"10.0.0.2"})
    rt = ByHostRuntime(local, ssh)  # type: ignore[arg-type]
    assert rt.is_alive(inst("10.0.0.2")) and rt.exit_code(inst("127.0.0.1")) == 3
    assert ssh.calls == [("is_alive", "10.0.0.2")]
    assert local.calls == [("exit_code", "127.0.0.1")]


def test_no_fleet_refuses_a_fleet_spec_with_what_to_do(tmp_path: Path) -> None:
    fleet = FleetSpec.model_validate({"hosts": [{"name": "web-1", "address": "10.0.0.2"}],
                                      "ssh": {"user": "deploy", "identity": "id"}})
    with pytest.raises(RuntimeFailure) as err:
        asyncio.run(NoFleet().use("shop", fleet, tmp_path))
    assert "shop" in err.value.message and err.value.hint
    assert NoFleet().unreachable_since("10.0.0.2") is None
