"""The dynamic half of the Database test, as one call: copy the database to a scratch
one, apply the pending migrations there while a probe workload runs (observe), then start
the live and the new release side by side on the result (compat). The scratch database
is gone afterwards whatever happens."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipyard.images.store import ImageStore
from shipyard.spec import DatabaseSpec

from .compat import Checker, CompatReport, Launcher, ReleaseUnderTest, compat_gate
from .observe import CheckReport
from .scaling import rehearsal_copy
from .statements import Script


@dataclass
class Rehearsal:
    check: CheckReport
    compat: CompatReport | None
    scripts: int

    @property
    def ok(self) -> bool:
        return self.check.ok and (self.compat is None or self.compat.ok)

    @property
    def reasons(self) -> list[str]:
        return list(self.check.reasons) + (self.compat.reasons if self.compat else [])

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "reasons": self.reasons, "migrations": self.scripts, "check": self.check.to_dict(),
                "compat": self.compat.to_dict() if self.compat else None}


def summary(check: CheckReport) -> str:
    """One line a human reads in the rollout's events: did it pass, what did it rewrite, how long
    would queries wait - and whether that figure was measured on a full copy or extrapolated."""
    rewrote = sorted({t for s in check.statements for t in s.rewritten})
    parts = [f"{len(check.statements)} statement(s) in {sum(s.duration for s in check.statements):.3f}s on the copy",
             f"rewrote {', '.join(rewrote)}" if rewrote else "no table rewritten"]
    worst = max(check.estimates, key=lambda e: e["seconds"], default=None)
    if worst is not None:
        parts.append(f"longest stall {worst['seconds'] * 1000:.0f} ms ({worst['table']} {worst['kind']}s; "
                     f"{worst['basis']})")
    else:
        probe = max(check.probes, key=lambda p: p.longest_stall, default=None)
        if probe is not None:
            parts.append(f"longest probe stall {probe.longest_stall * 1000:.0f} ms ({probe.table} {probe.kind}s; "
                         f"{check.basis})")
    head = "rehearsal on the scratch copy: " + ", ".join(parts)
    return head if check.ok else head + "; FAILED: " + "; ".join(check.reasons)


async def rehearse(db: DatabaseSpec, scripts: list[Script], releases: list[ReleaseUnderTest], *,
                   images: ImageStore, runtime: Launcher, checker: Checker, workdir: Path, env_source: Mapping[str, str],
                   log: Callable[[str], None] = lambda _m: None) -> Rehearsal:
    max_stall = db.check.max_stall if db.check.max_stall is not None else db.lock_timeout
    async with rehearsal_copy(db.url, scripts, sample_rows=db.check.sample_rows, lock_timeout=db.lock_timeout,
                              max_stall=max_stall, log=log) as (scratch, check):
        log(summary(check))
        compat = None
        if releases and not check.failed_statement:
            compat = await compat_gate(releases, scratch.url, images=images, runtime=runtime, checker=checker,
                                       workdir=workdir,
                                       env_source=env_source, log=log)
            log("compatibility: " + ("both releases pass" if compat.ok else "; ".join(compat.reasons)))
    return Rehearsal(check, compat, len(scripts))
