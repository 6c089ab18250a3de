"""The fleet drift scan on five namespace hosts with real sshd: instances started by SshRuntime,
each host scanned in one helper round trip by SshDriftScan, and every finding naming its
host (and path). What is changed on a host is changed the way a person with a root shell
there would: files edited in place, processes killed and started by hand."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shipyard.drift.baseline import RACY_SECONDS, stat_key
from shipyard.drift.report import DriftReport
from shipyard.runtime.ssh.drift_scan import SshDriftScan
from support.fleet_drift_scene import EDGE_CONFIG, Scene
from support.netns_hosts import NetnsFleet
from support.ssh_options import targets

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def scene(fleet5: NetnsFleet, tmp: Path) -> AsyncIterator[Scene]:
    s = Scene(fleet5, tmp)
    try:
        await s.deploy(per_host=2)
        yield s
    finally:
        await s.close()


def summary(report: DriftReport) -> list[tuple[str, str, str, str]]:
    """(kind, host, instance, change) of each finding, sorted ("-" for none)."""
    return sorted((f.kind, f.host or "-", f.instance_id or "-", f.evidence.get("change", "-"))
                  for f in report.findings)


async def test_a_clean_fleet_reports_nothing_in_either_pass(scene: Scene) -> None:
    scene.write_edge_config()
    for mode in ("metadata", "full"):
        report = await scene.scan(mode)   # type: ignore[arg-type]
        assert report.clean, [f.detail for f in report.findings]
        assert report.instances_scanned == 10 and report.files_checked == 5 * 2
        assert set(scene.scanner.last_timings) == {h.name for h in scene.fleet.hosts}
    assert report.bytes_hashed > 0   # the full pass read every file again


async def test_a_file_changed_in_a_tree_on_host_3_is_named_with_host_and_path(scene: Scene) -> None:
    h3 = scene.host(2)
    version = scene.tree_file(h3, "version.txt")
    version.chmod(0o644)
    version.write_text("v1-hotfix-by-hand\n")
    report = await scene.scan("metadata")
    on_h3 = [i.id for i, _ in scene.instances if i.host == h3.address]
    assert summary(report) == sorted([("content", h3.name, iid, change) for iid in on_h3
                                      for change in ("content", "mode")])
    f = next(f for f in report.findings if f.evidence["change"] == "content")
    assert f.paths == ["version.txt"] and f.detail.startswith(f"{h3.name}: ")
    assert f.evidence["host_paths"] == [f"/root/.shipyard/images/trees/{scene.image_id}/version.txt"]
    assert f.evidence["host_address"] == h3.address
    assert json.loads(json.dumps(report.to_dict()))["findings"][0]["host"] == h3.name


async def test_content_changed_with_mtime_and_size_restored(scene: Scene) -> None:
    """ctime is in the metadata baseline: writing the same size and resetting the mtime is still
    seen by the metadata pass. Forging the baseline as well hides it from that pass (it trusts
    the baseline): only the full re-hash, which trusts nothing, finds it then."""
    h4 = scene.host(3)
    app = scene.tree_file(h4, "app.py")
    await asyncio.sleep(max(0.0, RACY_SECONDS + 0.2 - (time.time() - os.stat(app).st_ctime)))
    assert (await scene.scan("metadata")).clean   # old enough now: the baseline records it
    recorded = json.loads(scene.baseline(h4).read_text())["files"]
    assert recorded["app.py"] == stat_key(os.lstat(app))
    before = os.stat(app)
    text = app.read_text()
    app.chmod(0o644)
    app.write_text(text.replace("200", "500"))
    app.chmod(0o444)
    os.utime(app, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(app)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    found = await scene.scan("metadata")
    assert {(f.host, f.paths[0]) for f in found.findings} == {(h4.name, "app.py")}

    doc = json.loads(scene.baseline(h4).read_text())   # the tamperer rewrites the baseline too
    assert "app.py" not in doc["files"], "a file that did not match is never trusted by its stat"
    doc["files"]["app.py"] = stat_key(os.lstat(app))
    scene.baseline(h4).write_text(json.dumps(doc))
    assert (await scene.scan("metadata")).clean, "the metadata pass trusts a matching baseline"
    full = await scene.scan("full")
    assert {(f.kind, f.host, f.paths[0], f.evidence["change"]) for f in full.findings} == {
        ("content", h4.name, "app.py", "content")}
    assert len(full.findings) == 2   # one per instance running from that tree


async def test_an_unmanaged_listener_on_a_service_port(scene: Scene) -> None:
    h2 = scene.host(1)
    inst = next(i for i, _ in scene.instances if i.host == h2.address)
    await scene.detached(h2, ["python3", "-m", "http.server", "--bind", "127.0.0.1", str(inst.port)])
    await scene.listening(h2, h2.address, inst.port)   # the instance itself still answers on its address
    report = await _until_found(scene, lambda r: any(f.kind == "unmanaged" for f in r.findings))
    assert len(report.findings) == 1, [x.to_dict() for x in report.findings]
    [f] = report.findings
    assert (f.kind, f.host, f.evidence["change"], f.evidence["port"]) == ("unmanaged", h2.name, "listener", inst.port)
    assert f.evidence["address"] == "127.0.0.1" and "http.server" in f.evidence["processes"][0]["argv"]
    assert f.detail.startswith(f"{h2.name}: port {inst.port}: pid ")


async def test_an_instance_process_replaced_by_hand(scene: Scene) -> None:
    """Someone on host 5 kills an instance and starts "the same thing" again by hand with its
    environment: the recorded process is gone, the new one is a stray claiming its id."""
    h5 = scene.host(4)
    inst = next(i for i, _ in scene.instances if i.host == h5.address)
    env = {"PATH": "/usr/bin:/bin", "SHIPYARD_INSTANCE_ID": inst.id, "SHIPYARD_SLOT": "blue",
           "SHIPYARD_DATA_DIR": inst.data_dir, "PORT": str(inst.port)}
    await scene.sh(h5, ["kill", "-KILL", "--", f"-{inst.pid}"])
    tree = f"/root/.shipyard/images/trees/{scene.image_id}"
    await scene.detached(h5, ["sh", "-c", f"cd {tree} && exec python3 app.py {h5.address} {inst.port}"], env)
    await scene.listening(h5, h5.address, inst.port)
    report = await scene.scan("metadata")
    assert summary(report) == sorted([("process", h5.name, inst.id, "gone"),
                                      ("unmanaged", h5.name, inst.id, "instance"),
                                      ("unmanaged", h5.name, "-", "listener"),
                                      ("release", "-", "-", "too_few_instances")]), report.findings
    gone = next(f for f in report.findings if f.evidence.get("change") == "gone")
    assert gone.detail == f"{h5.name}: instance {inst.id}: process gone: the pid is not running"
    stray = next(f for f in report.findings if f.evidence.get("change") == "instance")
    assert "outside that instance's process group" in stray.detail


async def test_an_edited_haproxy_config_on_a_host_is_named_with_its_path(scene: Scene) -> None:
    scene.write_edge_config()
    h5 = scene.host(4)
    cfg = scene.local(h5, EDGE_CONFIG)
    cfg.write_text(cfg.read_text().replace("maxconn 1000", "maxconn 50000"))
    report = await scene.scan("metadata")
    [f] = report.findings
    assert (f.kind, f.host, f.paths, f.instance_id) == ("content", h5.name, [EDGE_CONFIG], None)
    assert f.detail == f"{h5.name}: HAProxy configuration {EDGE_CONFIG} has changed content"


async def test_a_host_that_does_not_answer_is_unknown_never_clean(scene: Scene) -> None:
    h1 = scene.host(0)
    scanner = SshDriftScan(scene.pool, targets(scene.fleet), connect_wait=1.0, metadata_timeout=5.0)
    scene.fleet.cut_network(h1)
    began = time.monotonic()
    try:
        report = await scanner.scan(scene.inputs(), "metadata")
    finally:
        scene.fleet.restore_network(h1)
        await scanner.close()
    assert time.monotonic() - began < 8, "a silent host holds the scan up only as long as allowed"
    [f] = report.findings
    assert (f.kind, f.host, f.evidence["change"]) == ("unknown", h1.name, "unreachable")
    assert sorted(f.evidence["instances"]) == sorted(i.id for i, _ in scene.instances if i.host == h1.address)


async def _until_found(scene: Scene, found: object, tries: int = 20) -> DriftReport:
    report = await scene.scan("metadata")
    for _ in range(tries):
        if found(report):   # type: ignore[operator]
            return report
        await asyncio.sleep(0.1)
        report = await scene.scan("metadata")
    return report



async def test_heal_replaces_the_drifted_instances_on_that_host_from_a_fresh_tree(scene: Scene) -> None:
    """What the heal does with a fleet finding, by hand: a change hidden from the metadata pass
    by a forged baseline, found by the full pass, is quarantined on its host (kept aside as
    evidence), successors start there from a tree made afresh from the
    host's object store, the drifted instances stop, and both passes are clean again."""
    h3 = scene.host(2)
    assert (await scene.scan("metadata")).clean   # writes the baseline the tamperer then forges
    app = scene.tree_file(h3, "app.py")
    app.chmod(0o644)
    app.write_text(app.read_text().replace("200", "500"))
    app.chmod(0o444)
    doc = json.loads(scene.baseline(h3).read_text())
    doc["files"]["app.py"] = stat_key(os.lstat(app))
    scene.baseline(h3).write_text(json.dumps(doc))
    assert (await scene.scan("metadata")).clean   # hidden from the metadata pass
    report = await scene.scan("full")
    drifted = sorted({f.instance_id for f in report.findings if f.kind == "content" and f.host == h3.name})
    assert drifted == sorted(i.id for i, _ in scene.instances if i.host == h3.address)
    [image_id] = {f.evidence["image_id"] for f in report.findings}
    moved = await scene.scanner.quarantine(h3.address, image_id)
    assert moved is not None and "tampered" in moved

    old = {i.id: i for i, _ in scene.instances}
    successors = []
    for iid in drifted:
        launch = await scene.relaunch(old[iid], f"{iid}1")
        successors.append(await scene.runtime.start(launch))
    for iid in drifted:
        await scene.runtime.stop(old[iid], timeout=5)
    scene.instances = [(i, s) for i, s in scene.instances if i.id not in drifted] + \
        [(i, "healthy") for i in successors]
    assert "500" not in app.read_text() and not app.stat().st_mode & 0o222   # afresh, read-only
    assert "500" in scene.local(h3, moved + "/app.py").read_text()            # the evidence is kept
    for mode in ("metadata", "full"):
        after = await scene.scan(mode)   # type: ignore[arg-type]
        assert after.clean, [f.detail for f in after.findings]
