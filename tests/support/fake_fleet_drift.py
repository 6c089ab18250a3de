"""A FleetDriftScan (engine/ports.py) for engine tests on fakes: each host "answers" what the
test scripts (a drift.scan result shaped as fleet/remote/drift_probe.py sends it, or a string
saying why the host could not be asked), judged by the real drift/hosts.py.

With ``simulate=True`` a host without a scripted answer answers as a healthy host would for
what the inputs say runs there (each instance's process exactly as SshRuntime started it,
secret values withheld, its listener owned by it), except for the changes a test puts in
``tampered`` (the tree of an image on a host), which last until that tree is quarantined, and
those of ``edits``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shipyard.drift.fleet import FleetHost, FleetInputs
from shipyard.drift.hosts import fleet_report
from shipyard.drift.processes import expected_remote_process
from shipyard.drift.report import DriftReport, Mode
from shipyard.fleet.remote.instances import WITHHELD

HOST_UID = 0


def tree_on(address: str, image_id: str) -> str:
    return f"/fake/{address}/trees/{image_id}"


class FakeFleetDriftScan:
    def __init__(self, answers: dict[str, dict[str, Any] | str] | None = None, simulate: bool = False) -> None:
        self.answers: dict[str, dict[str, Any] | str] = dict(answers or {})
        """By host name; a host without one is reported as not scanned (unknown), or simulated."""
        self.simulate = simulate
        self.tampered: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        """(host address, image id) -> the changed files its tree shows (ContentResult.content)."""
        self.edits: dict[str, Callable[[FleetInputs, dict[str, Any]], None]] = {}
        """By host name: changes a simulated answer (a process's env, a stranger's listener)."""
        self.scans: list[tuple[str, Mode]] = []
        self.quarantined: list[tuple[str, str]] = []

    async def scan(self, inputs: FleetInputs, mode: Mode = "metadata") -> DriftReport:
        self.scans.append((inputs.service.name, mode))
        answers = dict(self.answers)
        if self.simulate:
            for host in inputs.hosts:
                if host.name not in answers:
                    answers[host.name] = answer = self.healthy_answer(inputs, host, mode)
                    if host.name in self.edits:
                        self.edits[host.name](inputs, answer)
        return fleet_report(inputs, mode, answers)

    async def quarantine(self, address: str, image_id: str) -> str | None:
        self.quarantined.append((address, image_id))
        self.tampered.pop((address, image_id), None)     # the next instance there gets a fresh tree
        return f"{tree_on(address, image_id)}.tampered"

    def healthy_answer(self, inputs: FleetInputs, host: FleetHost, mode: Mode) -> dict[str, Any]:
        live = [i for i, _ in inputs.live_on(host)]
        trees: dict[str, Any] = {}
        for image_id in sorted({i.image_id for i in live}):
            trees[image_id] = {"image_id": image_id, "tree": tree_on(host.address, image_id), "mode": mode,
                               "files_checked": 1,
                               "content": dict(self.tampered.get((host.address, image_id), {}))}
        procs: dict[str, Any] = {}
        for inst in live:
            launch = inputs.launches.get(inst.id)
            tree = tree_on(host.address, inst.image_id)
            if launch is None:
                procs[inst.id] = {"state": "running", "argv": [], "env": {}, "cwd": tree, "uid": HOST_UID}
                continue
            exp = expected_remote_process(inst, launch.command, launch.env, tree, HOST_UID, launch.secret_names)
            procs[inst.id] = {"state": "running", "argv": exp.argv, "cwd": tree, "uid": HOST_UID, "user": "root",
                              "env": {k: WITHHELD if exp.is_secret(k) else v for k, v in exp.env.items()}}
        return {
            "uid": HOST_UID, "user": "root", "instances_root": f"/fake/{host.address}/instances", "seconds": 0.0,
            "trees": trees, "processes": procs,
            "listeners": {"listeners": [{"address": host.address, "port": i.port,
                                         "owners": [{"pid": i.pid, "pgrp": i.pid, "uid": HOST_UID}]} for i in live],
                          "unreadable_pids": []},
            "files": {},
            "instance_processes": {"processes": [{"pid": i.pid, "pgrp": i.pid, "start_time": i.start_time,
                                                  "instance_id": i.id, "slot": i.slot, "data_dir": i.data_dir}
                                                 for i in live], "unreadable_pids": []},
        }
