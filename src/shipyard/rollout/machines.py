"""One door to the strategies: the driver asks for the entry actions and the next step
of a rollout without knowing whether it is blue-green or canary."""

from __future__ import annotations

from shipyard.rollout import bluegreen, canary
from shipyard.rollout.model import Action, Observation, Rollout
from shipyard.spec import Spec


def entry_actions(r: Rollout, spec: Spec) -> list[Action]:
    return canary.entry_actions(r, spec) if r.strategy == "canary" else bluegreen.entry_actions(r)


def step(r: Rollout, spec: Spec, obs: Observation, now: float) -> tuple[Rollout, list[Action]]:
    if r.strategy == "canary":
        return canary.step(r, spec, obs, now)
    return bluegreen.step(r, obs, now)
