"""The HostReports port over SSH: `shipyard hosts` and `shipyard hosts check`.

Each call opens its own SshConnections for the fleet's ssh section and closes them when it
returns, so a listing never leaves reconnect loops behind for hosts nobody asked about
again (connecting costs ~10 ms a host; 100 hosts in well under a second). Every host is
asked at once, at most `max_parallel` at a time; a host that fails is reported with its
reason and never holds up the others for longer than `connect_wait`.

A report reads the helper's host.facts (installing the helper first if the host lacks it).
A check goes step by step (fleet/host_status.py CHECK_STEPS) and says which step failed:
SSH with the host key checked against known_hosts, the host's python3 new enough for the
helper, the helper installed and answering, disk for the image (its objects and the tree
made from them, plus a margin), the service's listen port not held by a process on the
host, a port an instance could bind, and the image itself shipped and verified there."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from shipyard.errors import ShipyardError
from shipyard.fleet.host_status import (
    CHECK_STEPS,
    FAIL,
    OK,
    SKIP,
    CheckStep,
    HostCheck,
    HostReport,
    bytes_text,
)
from shipyard.fleet.remote import bundle
from shipyard.fleet.remote.client import HelperClient
from shipyard.fleet.remote.transfer import ship_image
from shipyard.images.store import ImageStore
from shipyard.runtime.ssh.connections import HostConnection, SshConnections
from shipyard.runtime.ssh.errors import HostUnreachable
from shipyard.runtime.ssh.helper_session import HelperSession, parse_probe, probe_argv
from shipyard.runtime.ssh.hostkeys import TrustedKey
from shipyard.runtime.ssh.options import SshTarget, options_from_spec, targets_from_spec
from shipyard.spec import Spec
from shipyard.spec.fleet import FleetSpec

log = logging.getLogger("shipyard.hosts")

DISK_MARGIN = 64 << 20
"""Free space kept beyond the image: instance logs, data dirs, the helper's own files."""


class _Failed(Exception):
    """One step failed: the steps after it are skipped with this reason."""

    def __init__(self, step: CheckStep) -> None:
        super().__init__(step.detail)
        self.step = step


class SshHostReports:
    """HostReports for hosts reached over SSH; implements shipyard.engine.ports.HostReports."""

    def __init__(self, images: ImageStore, *, root: str | None = None, python: str = "python3",
                 helper: tuple[str, bytes] | None = None, max_parallel: int = 32, connect_wait: float = 10.0,
                 call_timeout: float = 60.0, disk_margin: int = DISK_MARGIN,
                 on_trust: Callable[[TrustedKey], None] | None = None, **tuning: Any) -> None:
        self._images = images
        self._on_trust = on_trust
        """Told of every host key first trusted under trust_new_hosts (the daemon's KeyTrustAudit)."""
        self._root = root
        self._python = python
        self._helper = helper
        self._slots = asyncio.Semaphore(max_parallel)
        self._connect_wait = connect_wait
        self._call_timeout = call_timeout
        self._disk_margin = disk_margin
        self._tuning = tuning
        """SshOptions fields the spec does not set (timeouts, keepalive, backoff), for tests."""

    @property
    def helper(self) -> tuple[str, bytes]:
        assert self._helper is not None, "_connections builds it first"
        return self._helper

    # the port ---------------------------------------------------------------------------------
    async def report(self, fleet: FleetSpec, base_dir: Path) -> list[HostReport]:
        async with self._connections(fleet, base_dir) as (conns, broken):
            return await self._each(fleet, lambda t: self._report_one(conns, broken, t))

    async def check(self, spec: Spec, image_id: str | None, own_pids: Mapping[str, set[int]]) -> list[HostCheck]:
        fleet = spec.fleet
        if fleet is None:
            return []
        async with self._connections(fleet, spec.base_dir) as (conns, broken):
            return await self._each(fleet, lambda t: self._check_one(conns, broken, t, spec, image_id,
                                                                     own_pids.get(t.address, set())))

    # plumbing ---------------------------------------------------------------------------------
    @asynccontextmanager
    async def _connections(self, fleet: FleetSpec, base_dir: Path
                           ) -> AsyncIterator[tuple[SshConnections | None, ShipyardError | None]]:
        """The fleet's connections, or why none can be made (an identity that cannot be read
        fails every host of that fleet alike, with the same reason)."""
        if self._helper is None:   # built on first use (~0.1 s, off the loop): a daemon without fleets never pays
            self._helper = await asyncio.to_thread(bundle.build)
        tuning = {"connect_timeout": min(10.0, self._connect_wait), "reconnect_wait": self._connect_wait}
        try:
            conns = SshConnections(options_from_spec(fleet.ssh, base_dir, **(tuning | self._tuning)),
                                   on_trust=self._on_trust)
        except ShipyardError as e:
            yield None, e
            return
        try:
            yield conns, None
        finally:
            await conns.close()

    async def _each(self, fleet: FleetSpec, one: Callable[[SshTarget], Awaitable[Any]]) -> list[Any]:
        async def bounded(target: SshTarget) -> Any:
            async with self._slots:
                return await one(target)
        return list(await asyncio.gather(*(bounded(t) for t in targets_from_spec(fleet))))

    async def _reach(self, conns: SshConnections | None, broken: ShipyardError | None,
                     target: SshTarget) -> HostConnection:
        """The host's connection once made; its first failure (refused, key, auth) at once,
        not after the retries a runtime would wait through."""
        if conns is None:
            assert broken is not None
            raise broken
        hc = conns.host(target)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_wait
        while hc.state != "connected":
            if hc.last_error is not None:
                raise hc.last_error
            if loop.time() > deadline:
                raise HostUnreachable(target.name, f"no SSH connection to {target.name} ({target.address}) within "
                                      f"{self._connect_wait:g}s", "check that the host is up and sshd listens there")
            await asyncio.sleep(0.02)
        return hc

    def _session(self, hc: HostConnection) -> HelperSession:
        return HelperSession(hc, root=self._root, python=self._python, helper=self.helper,
                             timeout=self._call_timeout)

    async def _report_one(self, conns: SshConnections | None, broken: ShipyardError | None,
                          target: SshTarget) -> HostReport:
        t0 = time.monotonic()
        reachable = False
        try:
            hc = await self._reach(conns, broken, target)
            reachable = True
            session = self._session(hc)
            try:
                client = await session.client()
                facts = await asyncio.wait_for(client.facts(), self._call_timeout)
            finally:
                await session.close()
        except Exception as e:   # one host's failure, whatever it is, is that host's row only
            message, hint = _words(e, f"{target.name} did not answer within {self._call_timeout:g}s")
            return HostReport(target.name, target.address, reachable, message, hint, seconds=time.monotonic() - t0)
        return HostReport(target.name, target.address, True, facts=facts, seconds=time.monotonic() - t0)

    async def _check_one(self, conns: SshConnections | None, broken: ShipyardError | None, target: SshTarget,
                         spec: Spec, image_id: str | None, own: set[int]) -> HostCheck:
        t0 = time.monotonic()
        steps: list[CheckStep] = []
        session: HelperSession | None = None
        try:
            hc = await _step("ssh", self._reach(conns, broken, target))
            steps.append(CheckStep("ssh", OK, f"{hc.options.user}@{target.address}:{hc.port}, host key as in "
                                   f"{hc.options.known_hosts}"))
            steps.append(await _step("python", self._python_step(hc, target)))
            session = self._session(hc)
            client = await _step("helper", session.client())
            facts = await _step("helper", asyncio.wait_for(client.facts(), self._call_timeout))
            steps.append(CheckStep("helper", OK, f"helper {facts['helper_version']} (bundle "
                                   f"{str(facts['bundle_sha256'])[:12]}) under {facts['root']}"))
            disk = await _step("disk", self._disk_step(facts, image_id))
            steps.append(disk)
            steps.append(await _step("ports", self._ports_step(client, target, spec, own)))
            if image_id is None:
                steps.append(CheckStep("image", SKIP, "no image built for this service yet",
                                       "deploy it once; the check then ships and verifies its image"))
            elif disk.status == FAIL:
                steps.append(CheckStep("image", SKIP, "not tried: the disk is too small (nothing was sent)"))
            else:
                steps.append(await _step("image", self._image_step(client, image_id)))
        except _Failed as failed:
            steps.append(failed.step)
            done = {s.name for s in steps}
            steps += [CheckStep(n, SKIP, f"not tried: {failed.step.name} failed")
                      for n in CHECK_STEPS if n not in done]
        finally:
            if session is not None:
                await session.close()
        return HostCheck(target.name, target.address, steps, time.monotonic() - t0)

    async def _python_step(self, hc: HostConnection, target: SshTarget) -> CheckStep:
        result = await hc.run(probe_argv(self.helper[0], self._python), timeout=self._call_timeout)
        parse_probe(target.name, self._python, result)   # raises what to install when unusable
        version = result.stdout.decode("ascii", "replace").split()[0]
        need = ".".join(str(p) for p in bundle.MIN_PYTHON)
        return CheckStep("python", OK, f"{self._python} {version} (the helper needs >= {need})")

    async def _disk_step(self, facts: dict[str, Any], image_id: str | None) -> CheckStep:
        disk = (facts.get("host") or {}).get("disk") or {}
        free = disk.get("free")
        size = self._images.get(image_id).size if image_id else 0
        need = 2 * size + self._disk_margin
        what = (f"the image needs {bytes_text(2 * size)} (objects and tree) + {bytes_text(self._disk_margin)} margin"
                if image_id else f"a margin of {bytes_text(self._disk_margin)} (no image yet)")
        where = disk.get("path", "the helper root")
        if not isinstance(free, int):
            return CheckStep("disk", FAIL, f"the host did not say how much is free under {where}")
        if free < need:
            return CheckStep("disk", FAIL, f"{bytes_text(free)} free under {where}, {what}",
                             f"free space under {where} (or give the helper a bigger disk); "
                             f"at least {bytes_text(need)} is needed")
        return CheckStep("disk", OK, f"{bytes_text(free)} free under {where}; {what}")

    async def _ports_step(self, client: HelperClient, target: SshTarget, spec: Spec, own: set[int]) -> CheckStep:
        port = int(spec.listen.rpartition(":")[2])
        found = (await client.listeners([port]))["listeners"]
        foreign = [x for x in found if not x["pids"] or not set(x["pids"]) <= own]
        if foreign:
            who = "; ".join(f"{x['address']}:{x['port']} by " + (f"pid {', '.join(map(str, x['pids']))}"
                            if x["pids"] else "a process the helper cannot see") for x in foreign)
            return CheckStep("ports", FAIL, f"the service's port {port} is taken on {target.name}: {who}",
                             f"stop what listens there (ss -ltnp 'sport = :{port}' on the host), or move the "
                             "host out of the fleet: it is not shipyard's")
        free = await client.free_port(target.address, [])
        return CheckStep("ports", OK, f"port {port} is free; instances can bind {target.address} (e.g. port {free})")

    async def _image_step(self, client: HelperClient, image_id: str) -> CheckStep:
        shipped = await ship_image(client, self._images, image_id)
        verified = await client.verify(shipped.image_id, "metadata")
        if not verified.clean:
            return CheckStep("image", FAIL, f"the tree {shipped.tree} does not verify after shipping",
                             "check the host's disk and who writes under the helper's images/ directory")
        return CheckStep("image", OK, f"image {image_id[:12]} at {shipped.tree}, verified ({shipped.objects_sent} of "
                         f"{shipped.objects_total} objects sent, {bytes_text(shipped.bytes_sent)})")


async def _step(name: str, work: Awaitable[Any]) -> Any:
    """`work`'s result, or _Failed carrying its failure as step `name`."""
    try:
        return await work
    except Exception as e:   # one host's failure, whatever it is, is that host's result only
        message, hint = _words(e, f"no answer within the call timeout ({name})")
        raise _Failed(CheckStep(name, FAIL, message, hint)) from None


def _words(e: BaseException, timeout_text: str) -> tuple[str, str | None]:
    if isinstance(e, ShipyardError):
        return e.message, e.hint
    if isinstance(e, TimeoutError):
        return timeout_text, "the host may be overloaded; try again"
    log.exception("asking a host failed unexpectedly", exc_info=e)
    return f"{type(e).__name__}: {e}", "unexpected (an SSH surprise or a shipyard bug): see the daemon's log"


__all__ = ["DISK_MARGIN", "SshHostReports"]
