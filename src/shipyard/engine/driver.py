"""Driving one rollout: carry out the actions its state machine asks for, feed back what
they observed (or what a user commanded), persist every step. Strategy-agnostic: the
machine is chosen by `machines`; the actions are carried out here or by `SlotOps`.

A step whose record cannot be written is not taken. When the store refuses
(`StoreUnavailable`: disk full, locked by another process), the rollout stays at its last
recorded step and none of the new step's actions run; the driver tries again with backoff
(0.25 s doubling to 5 s, through the Clock) while its command queue stays open, so an
abort or a pause sent meanwhile is folded into the steps waiting to be written and
honoured once they are. An action that meets a refusing store half-way is run again
from the start once a write succeeds (actions are idempotent). There is no give-up: an
outage of any length leaves a rollout the daemon still drives, never an orphan. If the
store refused for longer than `STALE_AFTER`, what was observed before is too old to act
on: the rollout is aborted, cleanly, with the outage as its reason, as soon as that can
be written."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from shipyard.building import build_input
from shipyard.engine import baseline as baseline_slot
from shipyard.engine import edge
from shipyard.engine.actions import SlotOps
from shipyard.engine.deps import Deps
from shipyard.engine.judging import CanaryJudge
from shipyard.engine.metrics_feed import MetricsFeed
from shipyard.engine.migrating import DatabaseGate
from shipyard.engine.preview import preview_host, run_preview_checks
from shipyard.errors import ShipyardError, StoreUnavailable
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
RETRY_FIRST, RETRY_MAX = 0.25, 5.0
"""Backoff of a step (or an action) the store refused to record: first wait, longest wait."""
STALE_AFTER = 300.0
"""A step the store refused for longer than this is not taken: the rollout is aborted instead."""


class RolloutDriver:
    def __init__(self, deps: Deps, ops: SlotOps, feed: MetricsFeed, gate: DatabaseGate) -> None:
        self.d = deps
        self.ops = ops
        self.feed = feed
        self.gate = gate
        self.held: dict[str, StoreUnavailable] = {}
        """Rollouts held at their recorded step because the store refuses, and why."""

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
                        await self._until_done(r, lambda a=a, r=r: self.side_effect(r, spec, a))
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
            await self._until_done(r, lambda r=r: self._put(r), probe=False)   # never an orphan: wait for the store
            for a in actions:
                with contextlib.suppress(Exception):
                    if isinstance(a, WithdrawCanary):    # users off the canary first, then it ends (never raises)
                        r, more = machines.step(r, spec, await self.observe(r, spec, a), self.d.clock.now())
                        await self._until_done(r, lambda r=r: self._put(r), probe=False)
                        actions.extend(more)
                    else:
                        await self._until_done(r, lambda a=a, r=r: self.side_effect(r, spec, a))
        finally:
            self.held.pop(r.id, None)
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
            return await self._record(r, spec, [(new, type(obs).__name__)], actions, queue)

    def _record_one(self, new: Rollout, why: str) -> None:
        detail = f": {new.reason}" if new.reason and new.phase.terminal else ""
        self.d.on_event(self.d.store.record_step(new, "rollout.phase", f"{new.id} -> {new.phase}{detail}",
                                                 {"phase": str(new.phase), "observation": why}))

    async def _record(self, r: Rollout, spec: Spec, steps: list[tuple[Rollout, str]], actions: list[Action],
                      queue: asyncio.Queue[Observation]) -> tuple[Rollout, list[Action]]:
        """Write the steps in order; only then are `actions` (those of the last) taken. While
        the store refuses, `r` (the last recorded) stands, and commands are folded in."""
        delay, since, told, stale = RETRY_FIRST, self.d.clock.monotonic(), False, False
        while True:
            try:
                while steps:
                    self._record_one(*steps[0])
                    r = steps.pop(0)[0]
                if told:
                    log.info("rollout %s: the store writes again; recorded after %.1f s", r.id,
                             self.d.clock.monotonic() - since)
                self.held.pop(r.id, None)
                return r, actions
            except StoreUnavailable as e:
                self.held[r.id] = e
                if not told:
                    log.warning("rollout %s stays at phase %s, its next step not taken until it can be "
                                "recorded: %s", r.id, r.phase, e.message)
                    told = True
            if not stale and self.d.clock.monotonic() - since > STALE_AFTER:
                stale = True
                why = AbortRequested(f"the state store refused to record the rollout's next step for "
                                       f"more than {STALE_AFTER:g} s ({self.held[r.id].message})")
                new, more = machines.step(r, spec, why, self.d.clock.now())
                if new is not r:
                    steps, actions = [(new, "StoreUnavailable")], more
            cmd = await self._command_within(queue, delay)
            if cmd is None:
                delay = min(delay * 2, RETRY_MAX)
                continue
            last = steps[-1][0] if steps else r
            new, more = machines.step(last, spec, cmd, self.d.clock.now())
            if new is not last:
                steps.append((new, type(cmd).__name__))
                actions = more

    async def _command_within(self, queue: asyncio.Queue[Observation], seconds: float) -> Observation | None:
        getter = asyncio.create_task(queue.get())
        sleeper = asyncio.create_task(self.d.clock.sleep(seconds))
        done, _ = await asyncio.wait({getter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        sleeper.cancel()
        if getter in done:
            return getter.result()
        getter.cancel()
        return None

    def _put(self, r: Rollout) -> None:
        self.d.store.put_rollout(r)

    async def _until_done(self, r: Rollout, work: Callable[[], Any], probe: bool = True) -> Any:
        """Run `work` (an idempotent action or write); while the store refuses, wait with
        backoff until a write of the recorded rollout succeeds, then run it again."""
        delay, told = RETRY_FIRST, False
        while True:
            try:
                out = work()
                if asyncio.iscoroutine(out):
                    out = await out
                if told:
                    self.held.pop(r.id, None)
                return out
            except StoreUnavailable as e:
                self.held[r.id] = e
                if not told:
                    log.warning("rollout %s: an action of phase %s waits for the store: %s", r.id, r.phase,
                                e.message)
                    told = True
            while True:
                await self.d.clock.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                if not probe:
                    break
                try:
                    self._put(r)     # the recorded state again: writes nothing new, says if writes work
                    break
                except StoreUnavailable:
                    continue

    def waiting_on_store(self, rollout_id: str) -> StoreUnavailable | None:
        """Why a rollout is held at its recorded step (None: it is not)."""
        return self.held.get(rollout_id)

    async def observe(self, r: Rollout, spec: Spec, a: Action, judge: CanaryJudge | None = None) -> Observation:
        """What the action observed; run again if the store refused a write half-way."""
        obs: Observation = await self._until_done(r, lambda: self._observe(r, spec, a, judge))
        return obs

    async def _observe(self, r: Rollout, spec: Spec, a: Action, judge: CanaryJudge | None) -> Observation:
        match a:
            case SetCanaryWeight(slot=slot, weight=weight, instances=count, baseline=with_baseline):
                why = await self.ops.set_canary_weight(spec, slot, weight, count, r.id, with_baseline)
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
            case StartSlot(slot=slot, image_id=image_id, instances=count, baseline_image=stable):
                starts = [self.ops.start_slot(spec, slot, image_id, r.id, count)]
                if stable is not None:          # started together: the same process age
                    starts.append(baseline_slot.start(self.ops, spec, stable, count or spec.instance_count, r.id))
                why = "; ".join(w for w in await asyncio.gather(*starts) if w is not None) or None
                return SlotHealthy(slot) if why is None else SlotFailed(slot, why)
            case RunPreview(slot=slot):
                why = await run_preview_checks(spec, slot, lambda m: self.ops.event(r.service, "preview", m, r.id),
                                         self.d.health, self.ops.preview_token(r.service),
                                         edge.preview_trust(self.d.paths, r.service, preview_host(spec)))
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
                except StoreUnavailable:
                    raise
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
        except (ShipyardError, OSError) as e:     # OSError: the image store's disk is full
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
