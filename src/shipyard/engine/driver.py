"""Driving one rollout: carry out the actions its state machine asks for, feed back what
they observed (or what a user commanded), persist every step. Strategy-agnostic: the
machine is chosen by `machines`; the actions are carried out here or by `SlotOps`."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from shipyard.building import build_input
from shipyard.engine.actions import SlotOps
from shipyard.engine.deps import Deps
from shipyard.engine.judging import CanaryJudge
from shipyard.engine.metrics_feed import MetricsFeed
from shipyard.engine.migrating import DatabaseGate
from shipyard.engine.preview import run_preview_checks
from shipyard.errors import ShipyardError
from shipyard.rollout import machines
from shipyard.rollout.changes import spec_changes
from shipyard.rollout.model import (
    AbortRequested,
    Action,
    BuildFailed,
    BuildImage,
    Built,
    CanaryWithdrawn,
    KeepWarm,
    MigrateDatabase,
    Observation,
    Phase,
    PreviewFailed,
    PreviewPassed,
    Rollout,
    RunAnalysis,
    RunPreview,
    SetCanaryWeight,
    SlotFailed,
    SlotHealthy,
    StartSlot,
    Switched,
    SwitchFailed,
    SwitchTraffic,
    TearDown,
    Tick,
    Unregister,
    WaitUntil,
    WeightSet,
    WithdrawCanary,
)
from shipyard.spec import Spec

log = logging.getLogger("shipyard.driver")

SIDE_EFFECTS = (KeepWarm, TearDown, Unregister)
"""Actions whose outcome the machine does not wait for."""


class RolloutDriver:
    def __init__(self, deps: Deps, ops: SlotOps, feed: MetricsFeed, gate: DatabaseGate) -> None:
        self.d = deps
        self.ops = ops
        self.feed = feed
        self.gate = gate

    async def run(self, r: Rollout, spec: Spec, queue: asyncio.Queue[Observation]) -> None:
        actions: list[Action] = machines.entry_actions(r, spec)
        judge = watcher = None
        if r.strategy == "canary" and r.previous_slot is not None:
            judge = CanaryJudge(self.d, self.feed, r, spec)
            watcher = asyncio.create_task(judge.watch(lambda: r, queue), name=f"analysis {r.id}")
        try:
            while True:
                observing: asyncio.Task[Observation] | None = None
                for a in actions:
                    if isinstance(a, SIDE_EFFECTS):
                        await self.side_effect(r, spec, a)
                    else:
                        observing = asyncio.create_task(self.observe(r, spec, a, judge))
                if r.phase.terminal:
                    break
                r, actions = await self._next(r, spec, observing, queue)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug must not leave a rollout hanging: record it and stop safely
            log.exception("rollout %s crashed", r.id)
            r, actions = machines.step(r, spec, AbortRequested(f"internal error: {e!r}"), self.d.clock.now())
            if r.phase is Phase.WITHDRAWING and not actions:     # it was ending already: finish that
                actions = machines.entry_actions(r, spec)
            self.d.store.put_rollout(r)
            for a in actions:
                with contextlib.suppress(Exception):
                    if isinstance(a, WithdrawCanary):    # users off the canary first, then it ends (never raises)
                        r, more = machines.step(r, spec, await self.observe(r, spec, a), self.d.clock.now())
                        self.d.store.put_rollout(r)
                        actions.extend(more)
                    else:
                        await self.side_effect(r, spec, a)
        finally:
            if watcher is not None:
                watcher.cancel()
        self.ops.event(r.service, f"rollout.{r.phase}",
                       f"{r.kind} {r.id} {r.phase}" + (f": {r.reason}" if r.reason else ""), r.id,
                       phase=str(r.phase), timings=r.timings)

    async def _next(self, r: Rollout, spec: Spec, observing: asyncio.Task[Observation] | None,
                    queue: asyncio.Queue[Observation]) -> tuple[Rollout, list[Action]]:
        """Wait for the running action's observation or a command, whichever changes the rollout."""
        while True:
            getter = asyncio.create_task(queue.get())
            waiting = {getter} | ({observing} if observing else set())
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if observing in done:
                getter.cancel()
                obs = observing.result()
            else:
                obs = getter.result()
            new, actions = machines.step(r, spec, obs, self.d.clock.now())
            if new is r:
                if observing in done:
                    self.ops.event(r.service, "rollout.ignored", f"{type(obs).__name__} ignored in phase {r.phase}",
                                   r.id)
                    observing = None
                continue
            if observing is not None and observing not in done:
                observing.cancel()
                with contextlib.suppress(BaseException):
                    await observing
            detail = f": {new.reason}" if new.reason and new.phase.terminal else ""
            self.d.on_event(self.d.store.record_step(new, "rollout.phase", f"{new.id} -> {new.phase}{detail}",
                                                     {"phase": str(new.phase), "observation": type(obs).__name__}))
            return new, actions

    async def observe(self, r: Rollout, spec: Spec, a: Action, judge: CanaryJudge | None = None) -> Observation:
        match a:
            case SetCanaryWeight(slot=slot, weight=weight, instances=count):
                why = await self.ops.set_canary_weight(spec, slot, weight, count, r.id)
                return WeightSet(weight) if why is None else SlotFailed(slot, why)
            case WaitUntil(at=at):
                # the loop's timer and the wall clock can disagree by a few ms: a Tick that came early
                # would be ignored by the machine and nothing would wake it again
                while (left := at - self.d.clock.now()) > 0:
                    await self.d.clock.sleep(left)
                return Tick(self.d.clock.now())
            case RunAnalysis(until=until):
                assert judge is not None, "an analysis step needs a stable track to compare with"
                return await judge.step(until)
            case BuildImage():
                return await self._build(r, spec)
            case MigrateDatabase(image_id=image_id):
                return await self.gate.migrate(r, spec, image_id)
            case StartSlot(slot=slot, image_id=image_id, instances=count):
                why = await self.ops.start_slot(spec, slot, image_id, r.id, count)
                return SlotHealthy(slot) if why is None else SlotFailed(slot, why)
            case RunPreview(slot=slot):
                why = await run_preview_checks(spec, slot, lambda m: self.ops.event(r.service, "preview", m, r.id),
                                         self.d.health, self.ops.preview_token(r.service))
                return PreviewPassed() if why is None else PreviewFailed(why)
            case WithdrawCanary(slot=slot):
                try:
                    await self.ops.withdraw_canary(r.service, slot, r.id)
                except Exception as e:   # the rollout ends all the same; the teardown pushes the table again
                    return CanaryWithdrawn(slot, f"the router did not take the table: {getattr(e, 'message', repr(e))}")
                return CanaryWithdrawn(slot)
            case SwitchTraffic(slot=slot):
                try:
                    await self.ops.switch(spec, slot, r.id)
                except ShipyardError as e:
                    return SwitchFailed(f"the router did not take the new table: {e.message}")
                return Switched(slot)
        raise AssertionError(f"not an observing action: {a}")

    async def side_effect(self, r: Rollout, spec: Spec, a: Action) -> None:
        if isinstance(a, KeepWarm):
            bg = spec.strategy.blue_green
            delay = bg.scale_down_delay if bg is not None else 0.0
            await self.ops.keep_warm(r.service, a.slot, delay, r.id)
        elif isinstance(a, TearDown):
            await self.ops.teardown(r.service, a.slot, r.id, f"rollout {r.id} {r.phase}")
        elif isinstance(a, Unregister):
            await self.ops.unregister(r.service, r.id, f"its first release {r.id} {r.phase} before it served")

    async def _build(self, r: Rollout, spec: Spec) -> Observation:
        self.ops.event(r.service, "build.started", f"building image for {spec.service}", r.id)
        lines: list[str] = []
        try:
            image = await self.d.images.build(build_input(spec), log=lines.append)
        except ShipyardError as e:
            return BuildFailed(f"build failed: {e}")
        finally:
            if lines:
                self.ops.event(r.service, "build.log", "\n".join(lines[-100:]), r.id)
        svc = self.d.store.get_service(r.service)
        live = svc.live if svc else None
        self.ops.event(r.service, "build.done", f"image {image.id[:12]} ({image.files} files)", r.id, image=image.id)
        if live is None or live.image_id != image.id:
            return Built(image.id, live.image_id if live else None)
        # the same image: the release still differs if the spec does outside it (secret_env names,
        # replicas, health...). Compared as `plan` compares; only names are shown, never secret values.
        changes = tuple(c.summary for c in spec_changes(live.spec, spec.to_json_dict())) if live.spec else ()
        if changes:
            self.ops.event(r.service, "release.changed", f"image {image.id[:12]} already serves, but the spec "
                           f"changed: {'; '.join(changes)[:500]}", r.id, changes=list(changes[:50]))
        return Built(image.id, live.image_id, changes)
