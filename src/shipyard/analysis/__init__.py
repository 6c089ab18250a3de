"""Judging a canary against thresholds and against the stable track: pure statistics, no I/O.

The rollout feeds per-second series of both tracks (`Second`), sums over windows
(`Window`), and acts on the `Verdict`s; see docs/analysis.md for the methods and
their guarantees."""

from __future__ import annotations

from .baselines import Decision, fixed_horizon, flagger_rule, sequential_rule
from .batch import BatchMonitors, tick_of
from .evaluate import evaluate
from .sequential import MonitorPlan, SequentialState, advance, plans_of, update
from .series import Second, Window
from .verdict import Status, Verdict, overall

__all__ = [
    "BatchMonitors",
    "Decision",
    "MonitorPlan",
    "Second",
    "SequentialState",
    "Status",
    "Verdict",
    "Window",
    "advance",
    "evaluate",
    "fixed_horizon",
    "flagger_rule",
    "overall",
    "plans_of",
    "sequential_rule",
    "tick_of",
    "update",
]
