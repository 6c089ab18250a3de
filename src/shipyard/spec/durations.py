"""Durations as people write them (``500ms``, ``30s``, ``1h30m``) and as Python uses them (float seconds).

Specs are read by humans, so a bare ``10`` is ambiguous (seconds? minutes?) and is
rejected; the unit is always spelled out. Parsing goes through ``Decimal`` so that
``format_duration(parse_duration(s))`` and ``parse_duration(format_duration(x))`` are
exact, which is what lets a dumped spec load back to an equal value."""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal, InvalidOperation
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, PlainSerializer, ValidationInfo, WithJsonSchema

_NUMBER = r"\d+(?:\.\d+)?"
DURATION_PATTERN = rf"^(?:{_NUMBER}h)?(?:{_NUMBER}m)?(?:{_NUMBER}s)?(?:{_NUMBER}ms)?$"
"""Units in decreasing order, each at most once: 1h30m, 1m30s, 1.5s, 250ms."""

_DURATION_RE = re.compile(
    rf"(?:(?P<h>{_NUMBER})h)?(?:(?P<m>{_NUMBER})m)?(?:(?P<s>{_NUMBER})s)?(?:(?P<ms>{_NUMBER})ms)?"
)
_FACTORS = {"h": Decimal(3600), "m": Decimal(60), "s": Decimal(1), "ms": Decimal("0.001")}

FROM_FILE = "shipyard.spec.from_file"
"""Validation-context flag: the data came from a spec file, so durations must be strings."""


def _parse_decimal(text: str) -> Decimal:
    s = text.strip()
    match = _DURATION_RE.fullmatch(s) if s else None
    if match is None or not any(match.groupdict().values()):
        if re.fullmatch(_NUMBER, s):
            raise ValueError(_bare_number_text(s))
        raise ValueError(f"{json.dumps(text)} is not a duration like 10m")
    return sum((Decimal(v) * _FACTORS[unit] for unit, v in match.groupdict().items() if v), Decimal(0))


def parse_duration(text: str) -> float:
    """Seconds in ``text`` (``"1m30s"`` -> 90.0). Raises ``ValueError`` on anything else."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration string like 10m")
    return float(_parse_decimal(text))


def _plain(d: Decimal) -> str:
    """A decimal without exponent or trailing zeros: 1.50 -> '1.5', 1E+1 -> '10'."""
    s = format(d, "f")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s or "0"


def format_duration(seconds: float) -> str:
    """The canonical spelling of ``seconds``: ``600 -> "10m"``, ``0.5 -> "500ms"``, ``90 -> "1m30s"``.

    Below one second the value is written in ms; otherwise as h/m/s parts with the
    seconds part carrying any fraction. The result parses back to exactly ``seconds``."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError(f"{seconds!r} is not a number of seconds")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be a finite number >= 0, got {seconds!r}")
    try:
        total = Decimal(repr(float(seconds)))
    except InvalidOperation as exc:  # pragma: no cover - repr of a finite float always parses
        raise ValueError(f"cannot format {seconds!r} as a duration") from exc
    if total == 0:
        return "0s"
    if total < 1:
        return f"{_plain(total * 1000)}ms"
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if hours:
        parts.append(f"{_plain(hours)}h")
    if minutes:
        parts.append(f"{_plain(minutes)}m")
    if secs >= 1:
        parts.append(f"{_plain(secs)}s")
    elif secs:
        parts.append(f"{_plain(secs * 1000)}ms")
    return "".join(parts)


def _bare_number_text(shown: str) -> str:
    return f"{shown} is a bare number; durations need a unit (write {shown}s, not {shown})"


def _bare_number(value: int | float) -> str:
    return _bare_number_text(_plain(Decimal(repr(value))) if isinstance(value, float) else str(value))


def validate_duration(value: object, info: ValidationInfo) -> float:
    """Strings always; plain numbers (seconds) only from Python, never from a spec file."""
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{'true' if value is True else 'false' if value is False else 'nothing'} "
                         "is not a duration like 10m")
    if isinstance(value, int | float):
        from_file = bool(info.context and info.context.get(FROM_FILE))
        if from_file:
            raise ValueError(_bare_number(value))
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a duration must be a finite number >= 0, got {value!r}")
        return float(value)
    kind = "a list" if isinstance(value, list) else "a mapping" if isinstance(value, dict) else type(value).__name__
    raise ValueError(f"expected a duration like 10m, got {kind}")


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError(f"{format_duration(value)} is too short: must be longer than 0s")
    return value


DURATION_SCHEMA = {"type": "string", "pattern": DURATION_PATTERN, "minLength": 2, "examples": ["500ms", "30s", "10m"]}

Duration = Annotated[
    float,
    BeforeValidator(validate_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema(DURATION_SCHEMA),
]
"""A duration >= 0 (float seconds in Python, a string like 30s in YAML/JSON)."""

PositiveDuration = Annotated[
    float,
    BeforeValidator(validate_duration),
    AfterValidator(_positive),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema(DURATION_SCHEMA),
]
"""A duration > 0."""
