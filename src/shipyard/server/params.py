"""Query parameters, parsed one way for every route: a bad value is a 400 that names the
parameter and the range, never a 500 from int("abc"), float("1e400") or an integer SQLite
cannot hold."""

from __future__ import annotations

import math
import re

from starlette.requests import Request

from shipyard.errors import SpecError

MAX_ID = 2**53
"""Above any event, audit or rollout id the store will reach; below SQLite's integer limit."""
_WHOLE = re.compile(r"[0-9]{1,16}")      # ASCII digits only: int() would also take " 5", "1_0", "٣"
_NUMBER = re.compile(r"[0-9]{1,16}(\.[0-9]{0,9})?")


def _bad(name: str, raw: str, wanted: str) -> SpecError:
    shown = raw if len(raw) <= 40 else raw[:40] + "..."
    return SpecError(f"query parameter {name} must be {wanted}, got {shown!r}",
                     "leave it out for the default")


def int_param(request: Request, name: str, default: int, minimum: int = 0, maximum: int = MAX_ID) -> int:
    """`?name=` as a whole number in [minimum, maximum]; `default` when absent."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    wanted = f"a whole number from {minimum} to {maximum}"
    if not _WHOLE.fullmatch(raw):
        raise _bad(name, raw, wanted)
    value = int(raw)
    if not minimum <= value <= maximum:
        raise _bad(name, raw, wanted)
    return value


def number_param(request: Request, name: str, default: float, minimum: float = 0.0,
                 maximum: float = float(MAX_ID)) -> float:
    """`?name=` as a finite decimal number (no exponent, NaN or inf) in [minimum, maximum]."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    wanted = f"a number from {minimum:g} to {maximum:g}"
    if not _NUMBER.fullmatch(raw):
        raise _bad(name, raw, wanted)
    value = float(raw)
    if not (math.isfinite(value) and minimum <= value <= maximum):
        raise _bad(name, raw, wanted)
    return value
