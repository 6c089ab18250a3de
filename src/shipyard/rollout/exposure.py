"""The Blast-radius test for a spec: how many users a bad canary reaches before the
analysis can possibly say "failed", and how many requests that is at a given rate.

Pure arithmetic over the steps: walk them in time at the stated request rate; the
first verdict is possible once the canary has served `min_requests` requests and one
analysis interval has passed (no judge decides on less)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from shipyard.spec import Spec
from shipyard.spec.strategy import AnalysisStep, PauseStep, SetWeightStep


@dataclass(frozen=True)
class Exposure:
    strategy: str
    rate: float                       # requests per second the service gets, as given
    max_share: float                  # percent of users on the new release before the first possible verdict
    seconds: float | None             # from the first canary request to that verdict (None: never before 100 %)
    requests: float                   # requests the new release serves until then
    step: int | None                  # 1-based index of the step during which the verdict becomes possible
    max_weight_without_analysis: float
    note: str

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def exposure(spec: Spec, rate: float) -> Exposure:
    if rate <= 0:
        raise ValueError("the request rate must be positive")
    c = spec.strategy.canary
    if c is None:
        return Exposure("blue_green", rate, 100.0, None, math.inf, None, 100.0,
                        "blue-green moves every user at once: preview checks are the only gate before "
                        "100 % exposure; rollback is a switch while the old slot is warm")
    need, interval = c.analysis.min_requests, c.analysis.interval
    weight = 0.0
    t = served = 0.0
    started: float | None = None          # when the canary first got users
    unjudged_max = 0.0
    analysed = False

    def verdict_within(duration: float) -> float | None:
        """Seconds into a stretch of `duration` at the current weight when a verdict becomes possible."""
        if weight <= 0:
            return None
        per_s = rate * weight / 100
        at = max((need - served) / per_s, 0.0, (t if started is None else started) + interval - t)
        return at if at <= duration else None

    for i, s in enumerate(c.steps, start=1):
        match s:
            case SetWeightStep(set_weight=w):
                weight = w
                if w > 0 and started is None:
                    started = t
                if not analysed:
                    unjudged_max = max(unjudged_max, w)
                continue
            case PauseStep(pause=p):
                duration = math.inf if p.duration is None else p.duration
            case AnalysisStep(analysis=a):
                duration = a.duration
                analysed = True
        at = verdict_within(duration)
        if at is not None:
            served += rate * weight / 100 * at
            return Exposure("canary", rate, weight, t + at - (started or 0.0), served, i, unjudged_max,
                            f"the first verdict is possible {t + at - (started or 0.0):.0f}s after the canary "
                            f"gets users, at {weight:g}% (step {i})")
        served += rate * weight / 100 * duration
        t += duration
    return Exposure("canary", rate, 100.0, None, math.inf, None, max(unjudged_max, 100.0 if not analysed else 0),
                    f"no verdict is possible before promotion to 100 %: at {rate:g} req/s the steps give the canary "
                    f"{served:.0f} requests, fewer than min_requests ({need}); lengthen a pause or an analysis "
                    "step, or raise the first weight")
