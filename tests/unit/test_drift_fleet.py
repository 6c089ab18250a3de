"""The fleet drift judges (drift/fleet.py, drift/hosts.py) over plain host answers, shaped as
fleet/remote/drift_probe.py sends them: what each host is asked, and which finding each kind
of answer gives, always naming its host. The probe itself runs at the end against this
machine's /proc (a real child process)."""

from __future__ import annotations

import copy
import inspect
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shipyard.drift.fleet import FleetHost, FleetInputs, ManagedFile, RemoteLaunch, host_request
from shipyard.drift.hosts import fleet_report
from shipyard.engine import ports
from shipyard.fleet.remote import drift_probe
from shipyard.fleet.remote.instances import Instances
from shipyard.fleet.remote.store import HostStore
from shipyard.launching import REMOTE_BASE_ENV
from shipyard.procfs import process_start_time
from shipyard.rollout.records import Instance, ServiceRecord, Slot, SlotState
from shipyard.runtime.ssh.drift_scan import SshDriftScan
from support.fake_fleet_drift import FakeFleetDriftScan

IMAGE = "a" * 64
ROOT = "/root/.shipyard"
TREE = f"{ROOT}/images/trees/{IMAGE}"
H1 = FleetHost("h1", "10.0.0.1")
H2 = FleetHost("h2", "10.0.0.2", (ManagedFile("/etc/haproxy/haproxy.cfg", "b" * 64, "0644", "HAProxy configuration"),),
               frozenset({8080}), frozenset({77}))
LAUNCH = RemoteLaunch(["python3", "app.py", "--port", "${PORT}"], {"GREETING": "hi", "DB_PASSWORD": "pw"},
                      frozenset({"DB_PASSWORD"}))


def inst(n: int, host: FleetHost, pid: int) -> Instance:
    iid = f"shop-blue-{n:04x}"
    return Instance(iid, "shop", "blue", IMAGE, host.address, 40000 + n, pid, 1000 + n,
                    f"{ROOT}/instances/{iid}/log", f"{ROOT}/instances/{iid}/data")


INSTANCES = [inst(1, H1, 101), inst(2, H1, 102), inst(3, H2, 201)]


def inputs(**kw: Any) -> FleetInputs:
    svc = ServiceRecord("shop", "0.0.0.0:8080", active_slot="blue",
                        slots={"blue": Slot(SlotState.LIVE, IMAGE, replicas=3), "green": Slot()})
    return FleetInputs(svc, kw.pop("instances", [(i, "healthy") for i in INSTANCES]), kw.pop("hosts", [H1, H2]),
                       kw.pop("launches", {i.id: LAUNCH for i in INSTANCES}), **kw)


def clean_answer(host: FleetHost) -> dict[str, Any]:
    mine = [i for i in INSTANCES if i.host == host.address]
    procs = {}
    for i in mine:
        env = {**REMOTE_BASE_ENV, "GREETING": "hi", "DB_PASSWORD": "<withheld>", "PORT": str(i.port),
               "SHIPYARD_DATA_DIR": i.data_dir, "SHIPYARD_INSTANCE_ID": i.id, "SHIPYARD_SLOT": "blue",
               "SHIPYARD_IMAGE_ID": IMAGE, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
        procs[i.id] = {"state": "running", "argv": ["python3", "app.py", "--port", str(i.port)], "env": env,
                       "cwd": TREE, "uid": 0, "user": "root"}
    listeners = [{"address": host.address, "port": i.port, "owners": [{"pid": i.pid, "pgrp": i.pid, "uid": 0}]}
                 for i in mine]
    return {
        "uid": 0, "user": "root", "instances_root": f"{ROOT}/instances", "seconds": 0.01,
        "trees": {IMAGE: {"image_id": IMAGE, "tree": TREE, "mode": "metadata", "files_checked": 2}},
        "processes": procs,
        "listeners": {"listeners": listeners, "unreadable_pids": []},
        "files": {f.path: {"type": "file", "sha256": f.sha256, "size": 10, "mode": "0644"} for f in host.managed_files},
        "instance_processes": {"processes": [{"pid": i.pid, "pgrp": i.pid, "start_time": i.start_time,
                                              "instance_id": i.id, "slot": "blue", "data_dir": i.data_dir}
                                             for i in mine], "unreadable_pids": []},
    }


def answers(**changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"h1": clean_answer(H1), "h2": clean_answer(H2)}
    out.update(changes)
    return out


def kinds(report: Any) -> list[tuple[str, str | None, str | None, str]]:
    return sorted((f.kind, f.host or "-", f.instance_id or "-", f.evidence.get("change", "-"))
                  for f in report.findings)


def test_each_host_is_asked_for_its_own_instances_ports_and_files_and_no_secret_values() -> None:
    req = host_request(inputs(), H2, "full")
    assert req["mode"] == "full" and req["images"] == [IMAGE] and req["files"] == ["/etc/haproxy/haproxy.cfg"]
    assert req["ports"] == [8080, 40003]
    [proc] = req["processes"]
    assert (proc["instance_id"], proc["pid"], proc["start_time"]) == ("shop-blue-0003", 201, 1003)
    assert "GREETING" in proc["values_for"] and "PATH" in proc["values_for"]
    assert "DB_PASSWORD" not in proc["values_for"]
    assert [p["instance_id"] for p in host_request(inputs(), H1, "metadata")["processes"]] == \
        ["shop-blue-0001", "shop-blue-0002"]


def test_a_clean_fleet_gives_a_clean_report() -> None:
    report = fleet_report(inputs(), "metadata", answers())
    assert report.clean, [f.detail for f in report.findings]
    assert report.instances_scanned == 3 and report.files_checked == 4


def test_a_changed_file_names_the_host_the_path_and_every_instance_running_from_it() -> None:
    a = clean_answer(H1)
    a["trees"][IMAGE]["content"] = {"conf/app.toml": {"expected_size": 3, "actual_size": 5}}
    report = fleet_report(inputs(), "metadata", answers(h1=a))
    assert kinds(report) == [("content", "h1", "shop-blue-0001", "content"), ("content", "h1", "shop-blue-0002",
                                                                               "content")]
    f = report.findings[0]
    assert f.paths == ["conf/app.toml"] and f.evidence["host_paths"] == [f"{TREE}/conf/app.toml"]
    assert f.detail.startswith("h1: image aaaaaaaaaaaa: 1 path(s) changed content")
    assert f.to_dict()["host"] == "h1" and f.evidence["host_address"] == "10.0.0.1"


def test_a_tree_the_host_could_not_verify_is_unknown() -> None:
    a = clean_answer(H2)
    a["trees"][IMAGE] = {"error": {"code": "not_found", "message": "image aaaa was never materialised"}}
    report = fleet_report(inputs(), "metadata", answers(h2=a))
    assert kinds(report) == [("unknown", "h2", "-", "-")]
    assert "never materialised" in report.findings[0].detail


def test_a_gone_process_is_process_drift_and_the_slot_runs_short() -> None:
    a = clean_answer(H1)
    a["processes"]["shop-blue-0001"] = {"state": "recycled", "now": {"pid": 101, "argv": ["bash", "TOKEN=x"]}}
    report = fleet_report(inputs(), "metadata", answers(h1=a))
    assert kinds(report) == [("process", "h1", "shop-blue-0001", "gone"), ("release", "-", "-", "too_few_instances")]
    gone = report.findings[1] if report.findings[0].kind == "release" else report.findings[0]
    assert gone.evidence["now"]["argv"] == "bash TOKEN=<redacted>"


def test_argv_env_cwd_and_user_are_compared_with_what_the_runtime_started() -> None:
    a = clean_answer(H2)
    p = a["processes"]["shop-blue-0003"]
    p["argv"][-1] = "9999"
    p["env"]["GREETING"] = "bonjour"
    p["env"]["DB_PASSWORD"] = "<withheld>"
    p["cwd"] = f"{TREE}.tampered-1"
    p["uid"] = 1000
    [f] = fleet_report(inputs(), "metadata", answers(h2=a)).findings
    assert (f.kind, f.host, f.instance_id) == ("process", "h2", "shop-blue-0003")
    assert set(f.evidence) >= {"argv", "env_changed", "cwd", "uid"}
    assert "runs in /root/.shipyard/images/trees/" in f.detail and "runs as uid 1000, not 0" in f.detail
    assert "pw" not in str(f.to_dict())


def test_a_stranger_on_a_service_port_is_unmanaged_an_instance_child_is_not() -> None:
    a = clean_answer(H2)
    a["listeners"]["listeners"] += [
        {"address": "127.0.0.1", "port": 40003, "owners": [{"pid": 301, "pgrp": 301, "argv": ["nc", "-l"]}]},
        {"address": "0.0.0.0", "port": 8080, "owners": [{"pid": 77, "pgrp": 77}]},          # shipyard's own
        {"address": "::", "port": 40003, "owners": [{"pid": 205, "pgrp": 201}]},           # the instance's child
        {"address": "::1", "port": 8080, "owners": []},
    ]
    report = fleet_report(inputs(), "metadata", answers(h2=a))
    assert kinds(report) == [("unknown", "h2", "-", "-"), ("unmanaged", "h2", "-", "listener")]
    stranger = next(f for f in report.findings if f.kind == "unmanaged")
    assert stranger.evidence["pids"] == [301] and stranger.evidence["address"] == "127.0.0.1"
    assert stranger.detail == "h2: port 40003: pid 301 listens on 127.0.0.1:40003 and is not a process shipyard runs"


def test_processes_claiming_an_instance_id_outside_its_group_or_host_are_strays() -> None:
    a = clean_answer(H1)
    a["instance_processes"]["processes"] += [
        {"pid": 150, "pgrp": 150, "instance_id": "shop-blue-0001", "slot": "blue"},       # restarted by hand
        {"pid": 151, "pgrp": 151, "instance_id": "shop-blue-0003", "slot": "blue"},       # recorded on h2
        {"pid": 152, "pgrp": 152, "instance_id": "shop-blue-00ff", "slot": "blue"},       # no record
        {"pid": 153, "pgrp": 102, "instance_id": "shop-blue-0002", "slot": "blue"},       # its own child
        {"pid": 154, "pgrp": 154, "instance_id": "cart-blue-0001", "slot": "blue"},       # another service
    ]
    report = fleet_report(inputs(), "metadata", answers(h1=a))
    assert kinds(report) == [("unmanaged", "h1", iid, "instance")
                             for iid in ("shop-blue-0001", "shop-blue-0003", "shop-blue-00ff")]
    why = {f.instance_id: f.evidence["reason"] for f in report.findings}
    assert why["shop-blue-0003"] == "the instance is recorded on 10.0.0.2, not on this host"
    assert why["shop-blue-00ff"] == "shipyard has no record of this instance"


def test_a_managed_file_outside_the_tree_changed_missing_or_with_other_permissions() -> None:
    path = "/etc/haproxy/haproxy.cfg"
    for got, says in (({"type": "file", "sha256": "c" * 64, "size": 1, "mode": "0644"}, "has changed content"),
                      ({"type": "missing"}, "is missing"),
                      ({"type": "file", "sha256": "b" * 64, "size": 1, "mode": "0666"}, "has mode 0666, not 0644"),
                      ({"type": "symlink"}, "is a symlink")):
        a = clean_answer(H2)
        a["files"][path] = got
        [f] = fleet_report(inputs(), "metadata", answers(h2=a)).findings
        assert (f.kind, f.host, f.paths, f.instance_id) == ("content", "h2", [path], None)
        assert f.detail == f"h2: HAProxy configuration {path} {says}"


def test_a_host_without_an_answer_and_an_instance_on_no_known_host_are_unknown() -> None:
    stray = inst(9, FleetHost("h9", "10.0.0.9"), 901)
    ins = inputs(instances=[(i, "healthy") for i in [*INSTANCES, stray]])
    ins.service.slots["blue"].replicas = 4
    report = fleet_report(ins, "metadata", answers(h1="no answer within 30s (metadata scan)"))
    assert kinds(report) == [("unknown", "-", stray.id, "unknown_host"), ("unknown", "h1", "-", "unreachable")]
    h1 = next(f for f in report.findings if f.host == "h1")
    assert h1.evidence["instances"] == ["shop-blue-0001", "shop-blue-0002"]
    assert h1.detail == "h1: could not be scanned: no answer within 30s (metadata scan)"


def test_a_part_the_host_failed_is_unknown_the_rest_still_judged() -> None:
    a = copy.deepcopy(clean_answer(H2))
    a["listeners"] = {"error": {"code": "io_error", "message": "Permission denied"}}
    a["files"]["/etc/haproxy/haproxy.cfg"] = {"type": "missing"}
    report = fleet_report(inputs(), "metadata", answers(h2=a))
    assert kinds(report) == [("content", "h2", "-", "managed_file"), ("unknown", "h2", "-", "-")]


def test_an_answer_not_shaped_as_drift_scan_is_unknown_for_that_host_only() -> None:
    a = clean_answer(H1)
    a["trees"][IMAGE]["surprise"] = 1
    report = fleet_report(inputs(), "metadata", answers(h1=a))
    assert kinds(report) == [("unknown", "h1", "-", "unreachable")]
    assert "its answer could not be read (TypeError" in report.findings[0].detail


@pytest.mark.parametrize("impl", [SshDriftScan, FakeFleetDriftScan])
def test_the_adapter_and_the_fake_are_the_port(impl: type) -> None:
    for name in ("scan", "quarantine"):
        want, got = getattr(ports.FleetDriftScan, name), getattr(impl, name)
        assert inspect.iscoroutinefunction(got) and inspect.iscoroutinefunction(want)
        assert list(inspect.signature(got).parameters) == list(inspect.signature(want).parameters)


async def test_the_fake_judges_scripted_answers_with_the_real_judges() -> None:
    fake = FakeFleetDriftScan(answers())
    assert (await fake.scan(inputs(), "full")).clean and fake.scans == [("shop", "full")]
    fake.answers.pop("h2")
    assert kinds(await fake.scan(inputs())) == [("unknown", "h2", "-", "unreachable")]


def test_the_probe_reports_argv_env_cwd_and_user_of_a_real_process(tmp_path: Path) -> None:
    root = tmp_path / "state"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], cwd=tmp_path,
                             env={"SHIPYARD_INSTANCE_ID": "shop-blue-0001", "SHIPYARD_SLOT": "blue",
                                  "SHIPYARD_DATA_DIR": str(root / "instances" / "shop-blue-0001" / "data"),
                                  "SECRET_THING": "x", "KEEP": "y"})
    try:
        deadline = time.monotonic() + 10   # execve fills in argv and environ a moment after it returns
        while not Path(f"/proc/{child.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.005)
        start = process_start_time(child.pid)
        out = drift_probe.scan(HostStore(root / "images"), Instances(root, "bundle"), {
            "mode": "metadata", "images": [IMAGE], "ports": [], "files": [str(tmp_path / "none")],
            "processes": [{"instance_id": "shop-blue-0001", "pid": child.pid, "start_time": start,
                           "values_for": ["KEEP"]}]})
    finally:
        child.kill()
        child.wait()
    p = out["processes"]["shop-blue-0001"]
    assert p["state"] == "running" and p["cwd"] == str(tmp_path) and p["uid"] == os.getuid()
    assert p["env"]["KEEP"] == "y" and p["env"]["SECRET_THING"] == "<withheld>"
    assert out["trees"][IMAGE]["error"]["code"] == "not_found"
    assert out["files"] == {str(tmp_path / "none"): {"type": "missing"}}
    assert [(q["pid"], q["instance_id"]) for q in out["instance_processes"]["processes"]] == \
        [(child.pid, "shop-blue-0001")]
    assert out["uid"] == os.getuid() and out["listeners"] == {"listeners": [], "unreadable_pids": []}
