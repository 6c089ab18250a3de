"""The real API app on a fake world with FakeHostReports, for the `hosts` API and CLI unit
tests: fleet services stored as a deploy leaves them (a live slot with its spec), and a
client that speaks to the app in-process the way the CLI's ApiClient does (same error
mapping), so a CLI test runs CLI -> API -> engine -> port without a socket."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from shipyard import errors
from shipyard.client import KINDS
from shipyard.engine.controller import Controller
from shipyard.engine.host_keys import KeyTrustAudit
from shipyard.rollout.records import Instance, ServiceRecord, Slot, SlotState
from shipyard.server.api import create_app
from shipyard.spec import parse_spec
from support.fake_world import World
from support.fakes import FakeHostReports

TOKEN = "hosts-test-token"

FLEET_SPEC = """\
service: {name}
listen: 127.0.0.1:{port}
run: {{command: [app, --port, "${{PORT}}"]}}
fleet:
  hosts:
{hosts}
  ssh: {{user: deploy, identity: ./id_deploy, known_hosts: ./known_hosts}}
"""
LOCAL_SPEC = "service: {name}\nlisten: 127.0.0.1:{port}\nrun: {{command: [app, --port, \"${{PORT}}\"]}}\n"


def host_lines(*hosts: tuple[str, str]) -> str:
    return "\n".join(f"    - {{name: {n}, address: {a}}}" for n, a in hosts)


class HostsWorld:
    """A World whose Deps carry FakeHostReports, with helpers to store services."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.world = World(root)
        self.reports = FakeHostReports()
        deps = self.world.deps()
        self.reports.on_trust = KeyTrustAudit(deps.store.audit)   # as the daemon wires it
        deps.host_reports = self.reports
        self.controller = Controller(deps)
        self.app = create_app(self.controller, TOKEN)

    def add_service(self, name: str, port: int, hosts: tuple[tuple[str, str], ...] | None,
                    image_id: str = "a" * 64) -> ServiceRecord:
        text = (FLEET_SPEC.format(name=name, port=port, hosts=host_lines(*hosts)) if hosts
                else LOCAL_SPEC.format(name=name, port=port))
        spec = parse_spec(text, f"{name}.yaml", self.root)
        rec = ServiceRecord(name=name, listen=spec.listen, spec_path=str(self.root / f"{name}.yaml"),
                            active_slot="blue")
        rec.slots["blue"] = Slot(SlotState.LIVE, image_id, spec.to_stored_dict())
        self.world.store.put_service(rec)
        return rec

    def add_instance(self, service: str, iid: str, host: str, pid: int, status: str = "healthy") -> Instance:
        inst = Instance(id=iid, service=service, slot="blue", image_id="a" * 64, host=host, port=40000 + pid,
                        pid=pid, start_time=1, log_path="/x/log", data_dir="/x/data")
        self.world.store.put_instance(inst, status)
        return inst

    def request(self, method: str, path: str, body: Any = None, token: str = TOKEN) -> httpx.Response:
        """One request to the app in this thread (the fake store's audit log is SQLite, bound to it)."""
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8123",
                                         headers={"Authorization": f"Bearer {token}"}) as http:
                return await http.request(method, path, json=body)
        return asyncio.run(send())

    def api(self) -> InProcessApi:
        return InProcessApi(self)


class InProcessApi:
    """ApiClient's get/post over HostsWorld.request: the same documents, the same errors."""

    def __init__(self, world: HostsWorld) -> None:
        self.world = world

    def _done(self, resp: httpx.Response) -> dict[str, Any]:
        doc: dict[str, Any] = resp.json() if resp.content else {}
        if resp.status_code >= 400:
            cls = KINDS.get(doc.get("kind", ""), errors.ShipyardError)
            raise cls(doc.get("error") or f"daemon answered HTTP {resp.status_code}", doc.get("hint"))
        return doc

    def get(self, path: str) -> dict[str, Any]:
        return self._done(self.world.request("GET", path))

    def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._done(self.world.request("POST", path, body or {}))
