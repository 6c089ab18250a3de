"""The database side of a rollout (phase MIGRATING) and of `shipyard db contract`.

Order is the whole point (expand / contract): before the new release takes traffic,
only migrations the running release survives are applied - and only after lint and a
rehearsal on a scratch copy said they are safe. Migrations that break the running
release wait until no instance of it is left and the rollback window is closed."""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from shipyard.building import build_input
from shipyard.database.apply import apply_migrations
from shipyard.database.compat import ReleaseUnderTest
from shipyard.database.connect import connect
from shipyard.database.findings import Finding
from shipyard.database.plan import MigrationPlan, held_renames_text, load_source, plan_migrations
from shipyard.database.rehearsal import Rehearsal, rehearse
from shipyard.database.statements import Script
from shipyard.engine.actions import SlotOps, spec_from_doc
from shipyard.engine.deps import Deps
from shipyard.errors import ConflictError, ShipyardError, SpecError
from shipyard.rollout.model import Migrated, MigrationFailed, Observation, Rollout
from shipyard.rollout.records import SlotState
from shipyard.spec import Spec, load_spec


def findings_text(findings: list[Finding], limit: int = 5) -> str:
    lines = [f"{f.location} {f.rule}: {f.message} (fix: {f.fix})" for f in findings[:limit]]
    more = len(findings) - limit
    return "; ".join(lines) + (f"; and {more} more" if more > 0 else "")


class DatabaseGate:
    def __init__(self, deps: Deps, ops: SlotOps) -> None:
        self.d = deps
        self.ops = ops

    async def plan(self, spec: Spec) -> MigrationPlan:
        db = spec.database
        assert db is not None
        migrations = await asyncio.to_thread(load_source, db, spec.resolve_path)
        conn = await connect(db.url)
        try:
            return await plan_migrations(conn, migrations)
        finally:
            await conn.close()

    def _releases(self, spec: Spec, image_id: str, with_live: bool) -> list[ReleaseUnderTest]:
        releases = []
        svc = self.d.store.get_service(spec.service)
        if with_live and svc is not None and svc.live is not None and svc.live.image_id and svc.live.spec:
            if svc.live.image_id != image_id:
                live_spec = spec_from_doc(svc.live.spec, svc.spec_path)
                releases.append(ReleaseUnderTest("live", live_spec, svc.live.image_id))
        releases.append(ReleaseUnderTest("new", spec, image_id))
        return releases

    async def rehearse(self, spec: Spec, image_id: str, plan: MigrationPlan, *, contract: bool,
                       rollout_id: str | None = None) -> Rehearsal:
        db = spec.database
        assert db is not None
        todo = plan.pending if contract else plan.expand
        scripts = []
        for m in todo:
            skip = plan.resume_from(m)
            scripts.append(m.script if not skip else _tail(m.script, skip))
        with tempfile.TemporaryDirectory(prefix="shipyard-dbcheck-", dir=self.d.paths.root) as work:
            return await rehearse(db, scripts, self._releases(spec, image_id, with_live=not contract),
                                  images=self.d.images, runtime=self.d.runtime, checker=self.d.health, workdir=Path(work),
                                  env_source=self.d.env,
                                  log=lambda m: self.ops.event(spec.service, "database.check", m, rollout_id))

    async def check(self, spec_path: str, contract: bool = False) -> dict[str, Any]:
        """`shipyard db check`: build the release, rehearse what a deploy (or `db contract`) would apply."""
        spec = await asyncio.to_thread(load_spec, spec_path)
        if spec.database is None:
            raise SpecError(f"{spec_path} has no database section", "add database: {url, migrations} to check it")
        image = await self.d.images.build(build_input(spec))
        plan = await self.plan(spec)
        todo = plan.pending if contract else plan.expand
        rehearsal = await self.rehearse(spec, image.id, plan, contract=contract) if todo else None
        if rehearsal is not None and not contract:      # what `checklist` and the history show of it
            versions = [m.version for m in todo]
            self.ops.event(spec.service, "database.checked",
                           f"db check of {', '.join(versions)}: rehearsal {'passed' if rehearsal.ok else 'failed'}",
                           None, check=rehearsal.to_dict(), versions=versions, image=image.id)
        renames = [] if contract else plan.held_renames        # a deploy would stop on them (see _migrate)
        return {"service": spec.service, "image": image.id, "plan": plan.to_dict(), "contract": contract,
                "rehearsal": rehearsal.to_dict() if rehearsal else None,
                "blocking": [f.to_dict() for f in plan.gate_findings(contract)],
                "held_renames": held_renames_text(renames) if renames else None,
                "ok": (rehearsal is None or rehearsal.ok) and not plan.changed and not plan.gate_findings(contract)
                and not renames}

    # -- the MIGRATING phase ------------------------------------------------------------

    async def migrate(self, r: Rollout, spec: Spec, image_id: str) -> Observation:
        try:
            return await self._migrate(r, spec, image_id)
        except ShipyardError as e:
            return MigrationFailed(f"database: {e.message}" + (f" ({e.hint})" if e.hint else ""))

    async def _migrate(self, r: Rollout, spec: Spec, image_id: str) -> Observation:
        db = spec.database
        assert db is not None
        ev = self.ops.event
        plan = await self.plan(spec)
        ev(r.service, "database.plan", _plan_line(plan), r.id, plan=plan.to_dict())
        if plan.changed:
            return MigrationFailed(
                f"migration(s) {', '.join(plan.changed)} changed after they were applied; an applied migration is "
                "history: add a new migration instead")
        blocking = plan.gate_findings()
        if blocking and not r.allow_unsafe:
            return MigrationFailed(
                f"unsafe migration(s), nothing was changed: {findings_text(blocking)}. Rewrite them as suggested, "
                "or deploy with --allow-unsafe \"reason\"")
        if blocking:
            ev(r.service, "audit.allow_unsafe", f"unsafe migrations allowed: {r.allow_unsafe}", r.id,
               reason=r.allow_unsafe, findings=[f.to_dict() for f in blocking])
        if renames := plan.held_renames:
            if not r.allow_unsafe:
                return MigrationFailed(held_renames_text(renames))
            ev(r.service, "audit.allow_unsafe", f"held-back rename allowed: {r.allow_unsafe}", r.id,
               reason=r.allow_unsafe, findings=[f.to_dict() for f in renames])
        if not plan.expand:
            return Migrated(_plan_line(plan))
        if db.check.enabled:
            rehearsal = await self.rehearse(spec, image_id, plan, contract=False, rollout_id=r.id)
            ev(r.service, "database.checked", "rehearsal " + ("passed" if rehearsal.ok else "failed"), r.id,
               check=rehearsal.to_dict(), versions=[m.version for m in plan.expand])
            hard = rehearsal.check.failed_statement or (rehearsal.compat is not None and not rehearsal.compat.ok)
            if not rehearsal.ok and (hard or not r.allow_unsafe):
                return MigrationFailed("database check failed, nothing was changed: " + "; ".join(rehearsal.reasons))
        result = await apply_migrations(
            db.url, plan.expand, phases=plan.phases, lock_timeout=db.lock_timeout, retries=db.retries,
            resume={m.version: plan.resume_from(m) for m in plan.expand}, service=spec.service, release=image_id,
            note=r.allow_unsafe or None, log=lambda m: ev(r.service, "database.migrate", m, r.id),
            progress=lambda line, p: ev(r.service, "database.backfill", line, r.id, progress=p.to_dict()))
        ev(r.service, "database.applied", f"applied {', '.join(result.applied)}", r.id, result=result.to_dict())
        held = f"; held back (contract): {', '.join(m.version for m in plan.held)}" if plan.held else ""
        return Migrated(f"applied {', '.join(result.applied)}{held}")

    # -- `shipyard db contract` ---------------------------------------------------------

    def refuse_contract(self, service: str) -> None:
        """Contract breaks the old release: only when none of it runs and rollback cannot bring it back."""
        svc = self.d.store.get_service(service)
        if svc is None or svc.live is None or not svc.live.image_id:
            raise ConflictError(f"{service} has no live release", "deploy it first")
        if self.d.store.active_rollouts(service):
            raise ConflictError(f"a rollout of {service} is in progress", "wait for it to finish")
        live = svc.live.image_id
        for name, slot in svc.slots.items():
            if name != svc.active_slot and slot.state == SlotState.WARM:
                raise ConflictError(
                    f"the rollback window of {service} is open: slot {name} (image {(slot.image_id or '')[:12]}) "
                    "is kept warm so rollback is a switch",
                    "wait until it retires (strategy.blue_green.scale_down_delay), then run db contract again")
        old = [i for i, st in self.d.store.instances(service)
               if i.image_id != live and st not in ("stopped", "dead") and self.d.runtime.is_alive(i)]
        if old:
            raise ConflictError(
                f"{len(old)} instance(s) of an older release of {service} still run ({old[0].id})",
                "contract migrations would break them; wait until they are gone")

    async def contract(self, service: str, allow_unsafe: str = "") -> dict[str, Any]:
        self.refuse_contract(service)
        svc = self.d.store.get_service(service)
        assert svc is not None and svc.live is not None and svc.live.spec and svc.live.image_id
        spec = spec_from_doc(svc.live.spec, svc.spec_path)
        db = spec.database
        if db is None:
            raise ShipyardError(f"{service} has no database section", "nothing to contract")
        plan = await self.plan(spec)
        if not plan.pending:
            return {"applied": [], "message": "no pending migrations"}
        blocking = plan.gate_findings(contract=True)
        if blocking and not allow_unsafe:
            raise ShipyardError(f"unsafe contract migration(s), nothing was changed: {findings_text(blocking)}",
                                'rewrite them as suggested, or run db contract --allow-unsafe "reason"')
        if blocking:
            self.ops.event(service, "audit.allow_unsafe", f"unsafe contract migrations allowed: {allow_unsafe}",
                           reason=allow_unsafe, findings=[f.to_dict() for f in blocking])
        rehearsal = None
        if db.check.enabled:
            rehearsal = await self.rehearse(spec, svc.live.image_id, plan, contract=True)
            if not rehearsal.ok:
                raise ShipyardError("database check of the contract migrations failed, nothing was changed: "
                                    + "; ".join(rehearsal.reasons), "fix the migrations or the release")
        result = await apply_migrations(
            db.url, plan.pending, phases=plan.phases, lock_timeout=db.lock_timeout, retries=db.retries,
            resume={m.version: plan.resume_from(m) for m in plan.pending}, service=service,
            release=svc.live.image_id, note=allow_unsafe or None,
            log=lambda m: self.ops.event(service, "database.migrate", m),
            progress=lambda line, p: self.ops.event(service, "database.backfill", line, progress=p.to_dict()))
        self.ops.event(service, "database.contracted", f"contract: applied {', '.join(result.applied)}",
                       result=result.to_dict())
        return {"applied": result.applied, "seconds": result.seconds, "retries": result.retries,
                "check": rehearsal.to_dict() if rehearsal else None}


def _tail(script: Script, skip: int) -> Script:
    return replace(script, statements=script.statements[skip:])


def _plan_line(plan: MigrationPlan) -> str:
    if not plan.pending:
        return f"database up to date ({len(plan.applied)} migration(s) applied)"
    parts = [f"{len(plan.pending)} pending"]
    if plan.expand:
        parts.append(f"expand now: {', '.join(m.label for m in plan.expand)}")
    if plan.held:
        parts.append(f"held back (contract): {', '.join(m.label for m in plan.held)}")
    return "; ".join(parts)
