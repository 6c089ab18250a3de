"""One door to the strategies: the driver asks for the entry actions and the next step
of a rollout without knowing whether it is blue-green or canary. Rules that hold for
every strategy (a failed first release leaves nothing behind) are applied here once."""

from __future__ import annotations

from shipyard.rollout import bluegreen, canary
from shipyard.rollout.model import Action, Kind, Observation, Phase, Rollout, Unregister
from shipyard.spec import Spec


def entry_actions(r: Rollout, spec: Spec) -> list[Action]:
    return canary.entry_actions(r, spec) if r.strategy == "canary" else bluegreen.entry_actions(r)


def step(r: Rollout, spec: Spec, obs: Observation, now: float) -> tuple[Rollout, list[Action]]:
    if r.strategy == "canary":
        new, actions = canary.step(r, spec, obs, now)
    else:
        new, actions = bluegreen.step(r, obs, now)
    if not r.phase.terminal and first_release_abandoned(new):
        actions = [*actions, Unregister()]        # after the teardown: its instances leave first
    return new, actions


def first_release_abandoned(r: Rollout) -> bool:
    """`r` was the first release of its service (nothing served when it began) and it ended
    without serving: the service must not stay registered, holding its port and answering
    503. Also asked when a daemon restarts, in case it died before carrying that out."""
    return r.kind is Kind.DEPLOY and r.previous_slot is None and r.phase in (Phase.FAILED, Phase.ABORTED)
