"""The controller: the only place that decides. It turns API commands into rollouts,
drives each rollout's state machine by carrying out its actions, and persists every
step so a restarted daemon resumes exactly where it stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any, NoReturn

from shipyard.building import build_input
from shipyard.engine import edge, fleet_slots, fleet_sweep, listen_sharing
from shipyard.engine.actions import SlotOps, spec_from_doc
from shipyard.engine.deps import Deps
from shipyard.engine.drift_watch import DriftWatcher
from shipyard.engine.driver import RolloutDriver
from shipyard.engine.host_states import HostStates
from shipyard.engine.metrics_feed import MetricsFeed
from shipyard.engine.migrating import DatabaseGate
from shipyard.engine.queries import Queries
from shipyard.engine.supervisor import Supervisor
from shipyard.engine.tls_rotation import certificate_change, serve_certificate
from shipyard.errors import ConflictError, NotFoundError, ShipyardError, StoreUnavailable
from shipyard.rollout.canary import JUDGED
from shipyard.rollout.changes import migration_outlook, plan_service
from shipyard.rollout.model import (
    AbortRequested,
    FullPromoteRequested,
    Kind,
    Observation,
    PauseRequested,
    Phase,
    PromoteRequested,
    ResumeRequested,
    Rollout,
    other_slot,
)
from shipyard.rollout.records import ServiceRecord, SlotState
from shipyard.spec import Spec, load_spec

log = logging.getLogger("shipyard.controller")


class Controller:
    def __init__(self, deps: Deps) -> None:
        self.d = deps
        self.ops = SlotOps(deps)
        self.supervisor = Supervisor(deps, self.ops)
        self.feed = MetricsFeed(deps)
        self.gate = DatabaseGate(deps, self.ops)
        self.drift = DriftWatcher(deps, self.ops)
        self.driver = RolloutDriver(deps, self.ops, self.feed, self.gate)
        self.queries = Queries(deps, self.feed)           # what server/ reads; it never reaches into `d`
        self.queries.driving = self._driving
        self.host_states = HostStates(deps, self.ops, self.queries.hosts)   # hosts drain / undrain / remove
        self.queries.hosts.state_of = self.host_states.state_of
        self._drivers: dict[str, asyncio.Task[None]] = {}       # rollout id -> task
        self._commands: dict[str, asyncio.Queue[Observation]] = {}   # rollout id -> user commands
        self._begin_locks: dict[str, asyncio.Lock] = {}         # service -> held while a rollout begins

    # -- life cycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Re-adopt what survived the last daemon, then resume unfinished rollouts."""
        self.host_states.load()      # drained / removed hosts take nothing, from the first placement on
        for svc in self.d.store.list_services():
            await fleet_slots.use_fleets(self.d, svc, spec_from_doc, self.ops.event)   # their hosts first, or "gone"
            for inst, _status in self.d.store.instances(svc.name):
                if self.d.runtime.is_alive(inst):
                    self.ops.event(svc.name, "instance.adopted", f"re-adopted instance {inst.id} (pid {inst.pid})",
                                   instance=inst.id)
                else:
                    self.d.store.set_instance_status(inst.id, "dead")
                    self.ops.event(svc.name, "instance.lost", f"instance {inst.id} (pid {inst.pid}) is gone",
                                   instance=inst.id)
            try:
                self.ops.router_restarted(svc.name, await self.d.router.ensure(
                    svc.name, svc.listen, redirect_http=edge.redirect_of(self.d.paths, svc.name),
                    domains=listen_sharing.served_domains(self.d.store, svc)))
                async with self.ops.lock(svc.name):
                    await self.ops.push_table(svc)
            except ShipyardError as e:
                self.ops.event(svc.name, "router.error", f"router for {svc.name} not ready: {e.message}")
        await fleet_sweep.stop_unrecorded(self.d, self.ops, self.d.store.list_services(), spec_from_doc)
        await self._finish_interrupted_teardowns()
        await self.ops.forget_abandoned_first_releases()
        for r in self.d.store.active_rollouts():
            doc = self.d.store.rollout_spec(r.id)
            if doc is None:
                self._finish_orphan(r, "its spec was not recorded")
                continue
            self.ops.event(r.service, "rollout.resumed", f"resuming rollout {r.id} in phase {r.phase}", r.id)
            owner = self.d.store.get_service(r.service)
            self._spawn(r, spec_from_doc(doc, owner.spec_path if owner is not None else ""))
        self.supervisor.start()
        self.feed.start()
        self.drift.start()

    async def _finish_interrupted_teardowns(self) -> None:
        """A rollout is stored as ended before its last side effect: tearing down its canary
        or new slot and its baseline (failed, aborted) or the old stable and the baseline
        (canary succeeded), or keeping the slot that stopped serving warm until its
        retire_at (blue-green). A daemon killed in between left that slot up for good. With no rollout in progress such a slot belongs
        to nobody (a warm one without retire_at, to the last rollout): finish the job."""
        for svc in self.d.store.list_services():
            if self.d.store.active_rollouts(svc.name):
                continue
            last = next(iter(self.d.store.rollouts(svc.name, 1)), None)
            doc = self.d.store.rollout_spec(last.id) if last is not None else None
            for slot, s in svc.slots.items():
                if s.state == SlotState.WARM and s.retire_at is None and last and last.strategy != "canary" and doc:
                    bg = spec_from_doc(doc, svc.spec_path).strategy.blue_green     # the delay the driver's KeepWarm uses
                    await self.ops.keep_warm(svc.name, slot, bg.scale_down_delay if bg else 0.0, last.id)
                elif slot != svc.active_slot and (s.state in (SlotState.CANARY, SlotState.BASELINE,
                                                              SlotState.STARTING) or (
                        s.state == SlotState.WARM and s.retire_at is None)):
                    await self.ops.teardown(svc.name, slot, None, "its rollout had ended before the daemon restarted")

    async def close(self) -> None:
        """Stop deciding; instances and routers keep running (they are re-adopted next start)."""
        await self.supervisor.stop()
        await self.feed.stop()
        await self.drift.stop()
        tasks = list(self._drivers.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t

    # -- commands from the API ---------------------------------------------------------

    async def deploy(self, spec_path: str, image_id: str | None = None, allow_unsafe: str = "") -> Rollout:
        spec = await asyncio.to_thread(load_spec, spec_path)   # a spec is untrusted input: never parse it on the loop
        if allow_unsafe and spec.database is None:
            raise ConflictError("--allow-unsafe applies to database migrations, and this spec has no database")
        return await self._begin_deploy(spec, str(Path(spec_path).resolve()), image_id, allow_unsafe=allow_unsafe)

    async def _begin_deploy(self, spec: Spec, spec_path: str, image_id: str | None,
                            kind: Kind = Kind.DEPLOY, allow_unsafe: str = "") -> Rollout:
        self._refuse_if_busy(spec.service)      # at once, without queueing behind another deploy
        async with self._starting(spec.service):
            self._refuse_if_busy(spec.service)  # another deploy may have begun while we queued
            await self._let_last_rollout_finish(spec.service)
            self._refuse_if_busy(spec.service)
            svc = self.d.store.get_service(spec.service)
            self._refuse_listen_clash(spec)    # also on a redeploy: its domains may have changed
            if svc is not None and svc.listen != spec.listen:
                raise ConflictError(
                    f"{spec.service} listens on {svc.listen}, but this spec says listen: {spec.listen}",
                    f"moving the address moves every client at once, which no rollout can make safe: keep "
                    f"listen: {svc.listen}, or `shipyard remove {spec.service}` and deploy again")
            if kind is Kind.ROLLBACK:   # the panic button never waits for, or fails on, a certificate
                await self.d.router.ensure(spec.service, spec.listen, spec.router.kind,
                                           redirect_http=edge.redirect_of(self.d.paths, spec.service),
                                           domains=tuple(spec.domains or ()), workers=spec.router.workers)
            else:
                cert, _warnings = await asyncio.to_thread(edge.check, spec)   # refuses a bad pair (wall time)
                # may refuse (address in use, no haproxy): nothing recorded
                await self.d.router.ensure(spec.service, spec.listen, spec.router.kind,
                                           redirect_http=spec.tls.redirect_http if spec.tls else None,
                                           domains=tuple(spec.domains or ()), workers=spec.router.workers)
                await serve_certificate(self.ops, spec, cert)
            # re-read: the supervisor may have changed the record while the router started
            svc = self.d.store.get_service(spec.service) or ServiceRecord(spec.service, spec.listen, spec_path)
            svc.spec_path = spec_path
            now = self.d.clock.now()
            live = svc.active_slot
            bg = spec.strategy.blue_green
            migrate = spec.database is not None and kind is Kind.DEPLOY    # going back never migrates
            first = Phase.BUILDING if image_id is None else Phase.MIGRATING if migrate else Phase.STARTING
            r = Rollout(
                id="", service=spec.service, kind=kind,   # numbered by the store as it begins
                phase=first, target_slot=other_slot(live), migrate=migrate, allow_unsafe=allow_unsafe,
                previous_slot=live, image_id=image_id, previous_image_id=svc.live.image_id if svc.live else None,
                auto_promote=True if kind is Kind.ROLLBACK or bg is None else bg.auto_promote,
                created_at=now, updated_at=now, phase_started_at=now,
                # going back is never walked step by step: a rollback is a blue-green switch
                strategy="blue_green" if kind is Kind.ROLLBACK else spec.strategy.kind)
            r = self._begin(r, spec.to_stored_dict(), svc)
        if allow_unsafe:
            self.ops.event(spec.service, "audit.allow_unsafe", f"{r.id} may apply unsafe migrations: {allow_unsafe}",
                           r.id, reason=allow_unsafe)
        self.ops.event(spec.service, "rollout.created",
                       f"{kind} {r.id}: new release goes to slot {r.target_slot}"
                       + (f" (slot {live} keeps serving until the switch)" if live else ""), r.id)
        self._spawn(r, spec)
        return r

    async def promote(self, service: str, full: bool = False) -> Rollout:
        """Blue-green: switch a release waiting for promotion. Canary: go past the current
        step (a pause, an inconclusive analysis), or with `full` straight to 100 %."""
        r = self._active(self._service(service).name)   # an unknown service is 'not found'
        if r is not None and r.phase is Phase.AWAITING_PROMOTION:
            await self._command(r, PromoteRequested())
            return await self.wait(r.id, timeout=30)
        if r is None or r.strategy != "canary" or r.phase not in JUDGED:
            where = f"rollout {r.id} is in phase {r.phase}" if r else "no rollout is in progress"
            raise ConflictError(f"nothing to promote for {service}: {where}",
                                "promote applies to a blue-green rollout waiting for promotion "
                                "(auto_promote: false) or to a canary that is progressing or paused")
        return await self._command(r, FullPromoteRequested() if full else PromoteRequested())

    async def pause(self, service: str) -> Rollout:
        r = self._active_canary(service, "pause")
        if r.phase is Phase.PAUSED and r.hold != "timer":
            raise ConflictError(f"rollout {r.id} is already paused: {r.paused_reason}")
        return await self._command(r, PauseRequested())

    async def resume(self, service: str) -> Rollout:
        r = self._active_canary(service, "resume")
        if r.phase is not Phase.PAUSED or r.hold != "user":
            why = r.paused_reason or f"it is {r.phase}"
            raise ConflictError(f"rollout {r.id} was not paused by `shipyard pause` ({why})",
                                "a pause step or an inconclusive analysis goes on with `shipyard promote`")
        return await self._command(r, ResumeRequested())

    async def abort(self, service: str) -> Rollout:
        """Stop the rollout in progress: every user back on the release that served before."""
        r = self._active(self._service(service).name)   # an unknown service is 'not found'
        if r is None:
            raise ConflictError(f"{service} has no rollout in progress to abort",
                                "to go back to the previous release, use `shipyard rollback`")
        if r.phase is Phase.SWITCHING:
            raise ConflictError(f"rollout {r.id} is switching traffic right now", "run the abort again in a moment")
        if r.phase is not Phase.WITHDRAWING:      # else it is ending already: wait for it
            await self._command(r, AbortRequested("aborted by user"))
        return await self.wait(r.id, timeout=120)

    async def retry(self, service: str) -> Rollout:
        """Start the last failed or aborted rollout again, with the same spec and image."""
        self._refuse_if_busy(service)
        svc = self._service(service)
        last = next(iter(self.d.store.rollouts(service, 1)), None)
        if last is None or last.phase not in (Phase.FAILED, Phase.ABORTED) or last.kind is not Kind.DEPLOY:
            state = f"the last rollout {last.id} {last.phase}" if last else "it has no rollout"
            raise ConflictError(f"nothing to retry for {service}: {state}",
                                "retry starts a failed or aborted deploy again")
        doc = self.d.store.rollout_spec(last.id)
        if doc is None:
            raise ConflictError(f"the spec of rollout {last.id} was not recorded", "deploy the spec file again")
        return await self._begin_deploy(spec_from_doc(doc, svc.spec_path), svc.spec_path, last.image_id,
                                        allow_unsafe=last.allow_unsafe)

    def _active_canary(self, service: str, verb: str) -> Rollout:
        r = self._active(self._service(service).name)   # an unknown service is 'not found'
        if r is None or r.strategy != "canary" or r.phase.terminal:
            raise ConflictError(f"nothing to {verb} for {service}: no canary rollout is in progress")
        return r

    async def rollback(self, service: str) -> Rollout:
        """Abort a rollout that has not moved traffic; else switch back to the warm slot;
        else redeploy the previous image."""
        svc = self._service(service)
        r = self._active(service)
        if r is not None:
            if r.phase is Phase.SWITCHING:
                raise ConflictError(f"rollout {r.id} is switching traffic right now",
                                    "run the rollback again in a moment")
            if r.phase is not Phase.WITHDRAWING:
                await self._command(r, AbortRequested("rolled back by user before the switch"))
            return await self.wait(r.id, timeout=120)
        live = svc.active_slot
        if live is None:
            raise ConflictError(f"{service} has no live release to roll back")
        other = other_slot(live)
        warm = svc.slots[other]
        if warm.state == SlotState.WARM and warm.image_id and warm.spec and self.supervisor.slot_ready(service, other):
            spec = spec_from_doc(warm.spec, svc.spec_path)
            now = self.d.clock.now()
            # no lock: the panic button never queues behind a deploy; the store's check is atomic
            r = self._begin(Rollout(id="", service=service, kind=Kind.ROLLBACK, phase=Phase.SWITCHING,
                                    target_slot=other, previous_slot=live, image_id=warm.image_id,
                                    previous_image_id=svc.live.image_id if svc.live else None, owns_target=False,
                                    created_at=now, updated_at=now, phase_started_at=now), warm.spec)
            self.ops.event(service, "rollout.created", f"rollback {r.id}: switching back to warm slot {other}", r.id)
            self._spawn(r, spec)
            return await self.wait(r.id, timeout=30)
        if svc.previous_image_id and svc.previous_spec:
            spec = spec_from_doc(svc.previous_spec, svc.spec_path)
            return await self._begin_deploy(spec, svc.spec_path, svc.previous_image_id, Kind.ROLLBACK)
        raise ConflictError(f"{service} has no previous release to roll back to",
                            "rollback returns to the release that served before the live one")

    async def remove(self, service: str) -> None:
        """Stop a service entirely: its rollout, instances and router. History is kept."""
        svc = self._service(service)
        r = self._active(service)
        if r is not None:
            task = self._drivers.get(r.id)
            if task:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            self.d.store.put_rollout(r.enter(Phase.ABORTED, self.d.clock.now(), "service removed"))
        async with self.ops.lock(service):
            svc.active_slot = None
            self.d.store.put_service(svc)
        for slot in ("blue", "green", "baseline"):
            await self.ops.teardown(service, slot, None, "service removed")
        self.d.store.remove_drift_report(service)
        async with self.ops.lock(service):       # the supervisor ensures routers under it, from a fresh record
            await self.d.router.stop(service)
            self.d.store.delete_service(service)
            edge.restore(self.d.paths, service, None)
        self.ops.event(service, "service.removed", f"service {service} removed")

    async def wait(self, rollout_id: str, timeout: float) -> Rollout:
        task = self._drivers.get(rollout_id)
        if task is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), timeout)
        r = self.d.store.get_rollout(rollout_id)
        if r is None:
            raise NotFoundError(f"no rollout {rollout_id}")
        return r

    # -- driving a rollout -------------------------------------------------------------

    def _spawn(self, r: Rollout, spec: Spec) -> None:
        queue: asyncio.Queue[Observation] = asyncio.Queue()
        self._commands[r.id] = queue
        task = asyncio.create_task(self.driver.run(r, spec, queue), name=f"rollout {r.id}")
        self._drivers[r.id] = task
        task.add_done_callback(lambda _t, rid=r.id: (self._drivers.pop(rid, None), self._commands.pop(rid, None)))

    async def _let_last_rollout_finish(self, service: str) -> None:
        """A rollout is stored as ended before its last side effects (teardown; unregistering
        a first release that failed): a deploy right after it waits for them, so it never
        builds on a record that is being removed."""
        finishing = [t for rid, t in self._drivers.items() if rid.rsplit("-", 1)[0] == service]
        if finishing:
            await asyncio.wait(finishing, timeout=120)

    async def _command(self, r: Rollout, cmd: Observation) -> Rollout:
        """Hand a command to the rollout's driver; return the rollout once it took effect
        (or after 2 s: scaling a canary may take longer, `status` follows it). If the store
        refuses to record it, StoreUnavailable after those 2 s: the command stays queued."""
        q = self._commands.get(r.id)
        if q is None:
            raise ConflictError(f"rollout {r.id} is not being driven by this daemon", "check `shipyard status`")
        await q.put(cmd)
        deadline = self.d.clock.now() + 2.0
        while self.d.clock.now() < deadline:
            now = self.d.store.get_rollout(r.id)
            if now is not None and (now.phase, now.step_index, now.hold) != (r.phase, r.step_index, r.hold):
                return now
            await self.d.clock.sleep(0.02)
        held = self.driver.waiting_on_store(r.id)
        if held is not None:     # a step of it waits for the store: the command runs once that is written
            raise StoreUnavailable(f"{held.message}: rollout {r.id} stays at its last recorded step; the command is"
                                   " queued and is carried out once it can be recorded", held.hint, held.cause)
        return self.d.store.get_rollout(r.id) or r

    def _driving(self, rollout_id: str) -> tuple[bool, str | None]:
        held = self.driver.waiting_on_store(rollout_id)
        return rollout_id in self._drivers, held.message if held is not None else None

    def _finish_orphan(self, r: Rollout, why: str) -> None:
        self.d.store.put_rollout(r.enter(Phase.FAILED, self.d.clock.now(), f"could not resume: {why}"))

    def _active(self, service: str) -> Rollout | None:
        rs = self.d.store.active_rollouts(service)
        return rs[-1] if rs else None

    def _starting(self, service: str) -> asyncio.Lock:
        """Held while a rollout of `service` begins (router start included): a second deploy
        queues, then finds the first. Not the store's service lock, which the driver of the
        last rollout (that a deploy may wait for) takes."""
        return self._begin_locks.setdefault(service, asyncio.Lock())

    def _begin(self, r: Rollout, spec_doc: dict[str, Any], svc: ServiceRecord | None = None) -> Rollout:
        """Store a new rollout (and its service record) unless another is in progress: one transaction."""
        begun, got = self.d.store.begin_rollout(r, spec_doc, svc)
        return got if begun else self._refuse(got)

    def _refuse_if_busy(self, service: str) -> None:
        if (r := self._active(service)) is not None:
            self._refuse(r)

    def _refuse(self, r: Rollout) -> NoReturn:
        raise ConflictError(
            f"{r.service} already has a rollout in progress ({r.id}, phase {r.phase})",
            f"wait for it (`shipyard status {r.service}`), promote it, or `shipyard rollback {r.service}` to abort it")

    def _refuse_listen_clash(self, spec: Spec) -> None:
        listen_sharing.refuse_clash(self.d.store, spec)   # several services per address only by domains

    def _service(self, service: str) -> ServiceRecord:
        svc = self.d.store.get_service(service)
        if svc is None:
            raise NotFoundError(f"no service named {service!r}", "deploy it first: shipyard deploy -f FILE")
        return svc

    # -- what apply would do ----------------------------------------------------------

    async def plan(self, spec_path: str) -> dict[str, Any]:
        """What `apply` of this spec would change. Nothing live is touched: the candidate
        image is built into the store (cached by its inputs) and never started."""
        spec = await asyncio.to_thread(load_spec, spec_path)
        cert, _warnings = await asyncio.to_thread(edge.check, spec)   # one that cannot be served: refused, as deploy
        image = await self.d.images.build(build_input(spec))
        svc = self.d.store.get_service(spec.service)
        live = svc.live if svc is not None and svc.live is not None and svc.live.spec else None
        live_manifest = None
        if live is not None and live.image_id:
            with contextlib.suppress(ShipyardError):
                live_manifest = self.d.images.get(live.image_id).manifest
        blocked = []
        if (active := self._active(spec.service)) is not None:
            blocked.append(f"rollout {active.id} is in progress (phase {active.phase}): "
                           "wait for it or abort it")
        try:
            self._refuse_listen_clash(spec)
        except ConflictError as e:
            blocked.append(e.message)
        if svc is not None and live is None and svc.listen != spec.listen:
            blocked.append(f"{spec.service} is registered on {svc.listen}, "
                           f"the spec says listen: {spec.listen}")
        migrations = None
        if spec.database is not None:
            try:
                migrations = migration_outlook((await self.gate.plan(spec)).to_dict())
            except Exception as e:   # whatever stops us asking the database: "unknown", never "none"
                why = getattr(e, "message", None) or f"{type(e).__name__}: {e}"
                migrations = migration_outlook(None, why)
        p = plan_service(spec.to_json_dict(), image.manifest, image.id,
                         live_doc=live.spec if live else None, live_image=live.image_id if live else None,
                         live_manifest=live_manifest, context=spec.context_dir, migrations=migrations,
                         blocked=blocked)
        if live is not None and (change := certificate_change(self.d.paths, spec.service, cert)) is not None:
            p.changes.append(change)     # renewed files under the same names change no spec key
        return p.to_dict()
