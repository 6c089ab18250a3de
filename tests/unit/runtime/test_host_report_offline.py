"""SshHostReports where no host is ever contacted: an identity the daemon cannot read fails
every host of that fleet with the same clear reason (never a traceback, never a hang), in
a report and in a check alike."""

from __future__ import annotations

import asyncio
from pathlib import Path

from shipyard.fleet.host_status import FAIL, SKIP
from shipyard.images.store import ImageStore
from shipyard.runtime.ssh.host_report import SshHostReports
from shipyard.spec import parse_spec

SPEC = """\
service: shop
listen: 127.0.0.1:18080
run: {command: [app]}
fleet:
  hosts:
    - {name: web-1, address: 192.0.2.1}
    - {name: web-2, address: 192.0.2.2}
  ssh: {user: deploy, identity: ./no-such-key, known_hosts: ./known_hosts}
"""


def test_an_unreadable_identity_fails_every_host_with_its_reason(tmp_path: Path) -> None:
    spec = parse_spec(SPEC, "shop.yaml", tmp_path)
    assert spec.fleet is not None
    reports = SshHostReports(ImageStore(tmp_path / "images"), connect_wait=1.0)
    got = asyncio.run(reports.report(spec.fleet, tmp_path))
    assert [(r.name, r.state) for r in got] == [("web-1", "unreachable"), ("web-2", "unreachable")]
    want = f"the SSH identity {tmp_path / 'no-such-key'} of fleet.ssh.identity does not exist"
    assert all(r.error == want and r.hint and "ssh-keygen" in r.hint for r in got)
    checks = asyncio.run(reports.check(spec, None, {}))
    assert all(not c.ok and c.reason == f"ssh: {want}" for c in checks)
    assert all([s.status for s in c.steps] == [FAIL] + [SKIP] * 5 for c in checks)
