"""A FleetDriftScan (engine/ports.py) for engine tests on fakes: each host "answers" what the
test scripts (a drift.scan result shaped as fleet/remote/drift_probe.py sends it, or a string
saying why the host could not be asked), judged by the real drift/hosts.py."""

from __future__ import annotations

from typing import Any

from shipyard.drift.fleet import FleetInputs
from shipyard.drift.hosts import fleet_report
from shipyard.drift.report import DriftReport, Mode


class FakeFleetDriftScan:
    def __init__(self, answers: dict[str, dict[str, Any] | str] | None = None) -> None:
        self.answers: dict[str, dict[str, Any] | str] = dict(answers or {})
        """By host name; a host without one is reported as not scanned (unknown)."""
        self.scans: list[tuple[str, Mode]] = []
        self.quarantined: list[tuple[str, str]] = []

    async def scan(self, inputs: FleetInputs, mode: Mode = "metadata") -> DriftReport:
        self.scans.append((inputs.service.name, mode))
        return fleet_report(inputs, mode, self.answers)

    async def quarantine(self, address: str, image_id: str) -> str | None:
        self.quarantined.append((address, image_id))
        return f"/fake/{address}/trees/{image_id}.tampered"
