"""Drift of a fleet service on the fakes: the watcher asks the FleetDriftScan port about the
hosts (never this machine's /proc) with what each instance was started with (${HOST} in its
argv, its env, secret names withheld), keeps the report as on one machine, and a heal
quarantines the tampered tree on the host named by the finding, starts the successor where
placement says (the drifted one counted out) and routes it before the drifted one leaves."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from shipyard.engine.controller import Controller
from shipyard.errors import RuntimeFailure
from shipyard.rollout.model import Phase
from support.fake_fleet_drift import FakeFleetDriftScan
from support.fake_world import World
from support.fakes import run

ADDRESSES = [f"10.9.0.{n}" for n in range(1, 6)]
SECRET = "s3cret-value"
SPEC = """\
service: shop
listen: 127.0.0.1:18080
build: {{context: ./app}}
run: {{command: [app, --host, "${{HOST}}", --port, "${{PORT}}"], stop_timeout: 1s, secret_env: [API_TOKEN]}}
health: {{path: /healthz, interval: 500ms, timeout: 1s, healthy_threshold: 2, start_timeout: 10s}}
drift: {{interval: {interval}, full_interval: 24h, heal: {heal}}}
fleet:
  hosts:
{hosts}
  ssh: {{user: root, identity: id_test}}
  placement: {{per_host: 1}}
  batch: {{max_parallel: 5}}
strategy:
  blue_green: {{auto_promote: true, scale_down_delay: 10m}}
"""


def fleet_spec(root: Path, interval: str = "1h", heal: bool = False) -> Path:
    (root / "app").mkdir(parents=True, exist_ok=True)
    hosts = "\n".join(f"    - {{name: web-{n}, address: {a}}}" for n, a in enumerate(ADDRESSES, 1))
    path = root / "shop.yaml"
    path.write_text(SPEC.format(hosts=hosts, interval=interval, heal=str(heal).lower()))
    return path


def drive(world: World, scanner: Any, body: Any) -> None:
    async def main() -> None:
        c = Controller(replace(world.deps(), fleet_drift=scanner, env={"API_TOKEN": SECRET}))
        await c.start()
        try:
            await body(c)
        finally:
            await c.close()
    run(main(), world.clock)
    assert world.io_attempts == []


async def deployed(world: World, c: Controller, spec: Path) -> None:
    world.images.add("v1", command=["app", "--host", "${HOST}", "--port", "${PORT}"], env={"GREETING": "hi"})
    r = await c.wait((await c.deploy(str(spec), image_id="v1")).id, timeout=600)
    assert r.phase is Phase.SUCCEEDED, r.reason


def healthy(world: World) -> dict[str, str]:
    """Healthy instance id -> its host address."""
    return {i.id: i.host for i, st in world.store.instances("shop") if st == "healthy"}


def test_a_clean_fleet_is_scanned_on_its_hosts_with_host_in_argv_and_no_secret_value(
        world: World, tmp_path: Path) -> None:
    scanner = FakeFleetDriftScan(simulate=True)
    seen: list[Any] = []
    real_scan = scanner.scan

    async def keep(inputs: Any, mode: Any = "metadata") -> Any:
        seen.append(inputs)
        return await real_scan(inputs, mode)
    scanner.scan = keep  # type: ignore[method-assign]

    async def body(c: Controller) -> None:
        await deployed(world, c, fleet_spec(tmp_path))
        report = await c.drift.scan("shop", "full")
        assert report.clean, [f.detail for f in report.findings]
        assert report.instances_scanned == 5 and report.mode == "full"
        assert world.store.get_drift_report("shop")["clean"] is True
        [inputs] = seen
        assert sorted(h.address for h in inputs.hosts) == ADDRESSES
        assert sorted(h.name for h in inputs.hosts) == [f"web-{n}" for n in range(1, 6)]
        for inst, status in inputs.instances:
            if status == "healthy":
                launch = inputs.launches[inst.id]
                assert launch.command == ["app", "--host", "${HOST}", "--port", "${PORT}"]
                assert launch.env["GREETING"] == "hi" and "API_TOKEN" in launch.secret_names
        assert world.fleet.hosts["shop"] == ADDRESSES        # the hosts were made reachable first

    drive(world, scanner, body)


def test_a_tampered_tree_on_one_host_is_found_there_quarantined_and_its_instance_replaced_on_it(
        world: World, tmp_path: Path) -> None:
    scanner = FakeFleetDriftScan(simulate=True)
    victim = ADDRESSES[2]

    async def body(c: Controller) -> None:
        await deployed(world, c, fleet_spec(tmp_path))
        before = healthy(world)
        [drifted] = [iid for iid, host in before.items() if host == victim]
        scanner.tampered[(victim, "v1")] = {"app/config.toml": {"expected_size": 3, "actual_size": 9}}

        report = await c.drift.scan("shop")
        assert not report.clean
        [f] = report.findings
        assert (f.kind, f.host, f.instance_id, f.paths) == ("content", "web-3", drifted, ["app/config.toml"])
        assert f.evidence["host_paths"] == [f"/fake/{victim}/trees/v1/app/config.toml"]
        assert f.to_dict()["host"] == "web-3"
        assert world.store.get_drift_report("shop")["findings"][0]["host"] == "web-3"

        fixed = await c.drift.fix("shop")
        assert scanner.quarantined == [(victim, "v1")]
        [pair] = fixed["heal"]["replaced"]
        assert pair["drifted"] == drifted and fixed["heal"]["failed"] == []
        after = healthy(world)
        assert drifted not in after and after[pair["successor"]] == victim     # placement put it back there
        assert sorted(after.values()) == ADDRESSES
        assert fixed["after"]["clean"] is True, fixed["after"]["findings"]
        kinds = [e.kind for e in world.store.events("shop")]
        assert kinds.index("drift.quarantined") < kinds.index("drift.healed")
        svc = world.store.get_service("shop")
        assert svc is not None and svc.active_slot is not None
        routed = {u.id for u in world.router.tables["shop"].tracks[svc.active_slot]}
        assert pair["successor"] in routed and drifted not in routed
        assert drifted in world.runtime.stopped

    drive(world, scanner, body)


def test_process_drift_is_replaced_and_a_stranger_on_a_port_only_reported(world: World, tmp_path: Path) -> None:
    scanner = FakeFleetDriftScan(simulate=True)

    async def body(c: Controller) -> None:
        await deployed(world, c, fleet_spec(tmp_path))
        by_host = {host: iid for iid, host in healthy(world).items()}
        changed = by_host[ADDRESSES[0]]

        def other_env(inputs: Any, answer: dict[str, Any]) -> None:     # web-1: its instance's env was changed
            if changed in answer["processes"]:
                answer["processes"][changed]["env"]["GREETING"] = "changed"

        def stranger(inputs: Any, answer: dict[str, Any]) -> None:      # web-2: someone else on its port too
            answer["listeners"]["listeners"][0]["owners"] = [{"pid": 4242, "pgrp": 4242, "uid": 1000}]
        scanner.edits = {"web-1": other_env, "web-2": stranger}

        report = await c.drift.scan("shop")
        got = sorted((f.kind, f.host or "-", f.instance_id or "-") for f in report.findings)
        assert got == [("process", "web-1", changed), ("unmanaged", "web-2", "-")], got
        assert "GREETING" in report.findings[0].detail or "GREETING" in str(report.findings[0].evidence)

        fixed = await c.drift.fix("shop")
        [pair] = fixed["heal"]["replaced"]
        assert pair["drifted"] == changed and scanner.quarantined == []   # a process drift leaves the tree alone
        after = healthy(world)
        assert after[pair["successor"]] == ADDRESSES[0]
        assert by_host[ADDRESSES[1]] in after               # the stranger's host: nothing replaced, nothing killed
        assert [f["kind"] for f in fixed["after"]["findings"]] == ["unmanaged"]

    drive(world, scanner, body)


def test_an_instance_started_while_the_hosts_were_scanned_is_not_a_stray(world: World, tmp_path: Path) -> None:
    """Over SSH the record follows the start by a round trip: a scan that began before it may
    see the process first. Recorded by the time the scan ends (on that host, that pid), it is
    not reported; one still unrecorded is."""
    scanner = FakeFleetDriftScan(simulate=True)

    async def body(c: Controller) -> None:
        await deployed(world, c, fleet_spec(tmp_path))
        one = next(i for i, st in world.store.instances("shop") if st == "healthy" and i.host == ADDRESSES[1])
        newcomer = replace(one, id="shop-blue-00aa01", pid=55_001, start_time=7)
        stranger = replace(one, id="shop-blue-00bb02", pid=55_002, start_time=8)

        def starting(inputs: Any, answer: dict[str, Any]) -> None:
            for i in (newcomer, stranger):
                answer["instance_processes"]["processes"].append(
                    {"pid": i.pid, "pgrp": i.pid, "start_time": i.start_time, "instance_id": i.id,
                     "slot": i.slot, "data_dir": i.data_dir})
            world.store.put_instance(newcomer, "starting")      # its start returns while the scan runs
        scanner.edits = {"web-2": starting}

        report = await c.drift.scan("shop")
        assert [(f.kind, f.host, f.instance_id) for f in report.findings] == [("unmanaged", "web-2", stranger.id)]

    drive(world, scanner, body)


def test_a_host_that_cannot_be_asked_is_unknown_and_nothing_is_healed(world: World, tmp_path: Path) -> None:
    scanner = FakeFleetDriftScan({"web-4": "no answer within 30s (metadata scan)"}, simulate=True)

    async def body(c: Controller) -> None:
        await deployed(world, c, fleet_spec(tmp_path))
        before = healthy(world)
        fixed = await c.drift.fix("shop")
        report = fixed["before"]
        assert not report["clean"]
        [f] = report["findings"]
        assert f["kind"] == "unknown" and f["host"] == "web-4" and "no answer" in f["detail"]
        assert fixed["heal"]["replaced"] == [] and healthy(world) == before

    drive(world, scanner, body)


def test_with_heal_on_the_watcher_scans_the_hosts_and_replaces_the_drifted_instance(
        world: World, tmp_path: Path) -> None:
    scanner = FakeFleetDriftScan(simulate=True)

    async def body(c: Controller) -> None:
        await deployed(world, c, fleet_spec(tmp_path, interval="10s", heal=True))
        victim = ADDRESSES[4]
        [drifted] = [iid for iid, host in healthy(world).items() if host == victim]
        scanner.tampered[(victim, "v1")] = {"app/x.py": {"expected_size": 1, "actual_size": 2}}
        await world.clock.sleep(30)
        assert scanner.scans, "the watcher never scanned the fleet"
        assert scanner.quarantined == [(victim, "v1")]
        after = healthy(world)
        assert drifted not in after and sorted(after.values()) == ADDRESSES
        assert world.store.get_drift_report("shop")["clean"] is True
        kinds = [e.kind for e in world.store.events("shop")]
        assert "drift.found" in kinds and "drift.healed" in kinds and "drift.cleared" in kinds

    drive(world, scanner, body)


def test_without_a_fleet_scanner_the_scan_says_so_instead_of_calling_the_hosts_clean(
        world: World, tmp_path: Path) -> None:
    async def body(c: Controller) -> None:
        await deployed(world, c, fleet_spec(tmp_path))
        try:
            await c.drift.scan("shop")
        except RuntimeFailure as e:
            assert "no fleet drift scanner" in e.message and e.hint
        else:
            raise AssertionError("a fleet service was scanned without a scanner")
        assert world.store.get_drift_report("shop") is None

    drive(world, _default_scanner(world), body)


def _default_scanner(world: World) -> Any:
    return world.deps().fleet_drift
