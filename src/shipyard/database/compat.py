"""The compatibility gate: the release that runs now and the new one, started side by side
against the migrated scratch database, must both pass their checks. This is the seed's
Database test made literal - "does the schema support both the old and the new code at
once" - answered by running both, not by guessing."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from shipyard.images.store import ImageStore
from shipyard.rollout.records import Instance, LaunchSpec
from shipyard.runtime.environment import release_env
from shipyard.spec import Spec
from shipyard.spec.strategy import PreviewCheck


class Launcher(Protocol):
    """What the gate needs of a runtime (the engine's Runtime port satisfies it); a
    structural type here so this library does not depend on the engine."""

    async def start(self, launch: LaunchSpec) -> Instance: ...
    async def stop(self, instance: Instance, timeout: float) -> None: ...
    def is_alive(self, instance: Instance) -> bool: ...
    def exit_code(self, instance: Instance) -> int | None: ...


class Checker(Protocol):
    """What the gate needs to judge a started release (the engine's HealthProbe port satisfies it)."""

    async def wait_healthy(self, inst: Instance, *, path: str, interval: float, timeout: float,
                           healthy_threshold: int, deadline_s: float, is_alive: Callable[[Instance], bool],
                           exit_code: Callable[[Instance], int | None] | None = None) -> tuple[bool, str]: ...

    async def run_checks(self, base_url: str, checks: Sequence[PreviewCheck], *, label: str,
                         extra_headers: Mapping[str, str] | None = None,
                         log: Callable[[str], None] | None = None) -> str | None: ...

@dataclass(frozen=True)
class ReleaseUnderTest:
    role: str                 # "live" | "new"
    spec: Spec
    image_id: str


@dataclass
class ReleaseResult:
    role: str
    image_id: str
    ok: bool
    detail: str
    checks: list[str] = field(default_factory=list)


@dataclass
class CompatReport:
    results: list[ReleaseResult]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def reasons(self) -> list[str]:
        return [f"{r.role} release {r.image_id[:12]}: {r.detail}" for r in self.results if not r.ok]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "results": [asdict(r) for r in self.results], "reasons": self.reasons}


def checks_for(spec: Spec) -> list[PreviewCheck]:
    """database.check.requests, else the blue-green preview checks, else a GET of the health path."""
    db = spec.database
    if db is not None and db.check.requests is not None:
        return list(db.check.requests)
    bg = spec.strategy.blue_green
    if bg is not None and bg.preview_checks:
        return list(bg.preview_checks)
    return [PreviewCheck(path=spec.health.path)]


async def compat_gate(releases: list[ReleaseUnderTest], scratch_url: str, *, images: ImageStore, runtime: Launcher,
                      checker: Checker, workdir: Path, env_source: Mapping[str, str],
                      log: Callable[[str], None] = lambda _m: None) -> CompatReport:
    """Start every release at once on the scratch database, check each, stop them all (also on failure)."""
    started: list[tuple[ReleaseUnderTest, Instance]] = []
    results: dict[int, ReleaseResult] = {}
    try:
        for i, rel in enumerate(releases):
            try:
                launch = _launch(rel, scratch_url, images, workdir, env_source)
                started.append((rel, await runtime.start(launch)))
            except Exception as e:       # a release that cannot even start fails the gate, with the reason
                results[i] = ReleaseResult(rel.role, rel.image_id, False, f"could not start: {e}")
        outcomes = await asyncio.gather(*(_check(rel, inst, runtime, checker, log) for rel, inst in started))
        for (rel, _), res in zip(started, outcomes, strict=True):
            results[releases.index(rel)] = res
    finally:
        await asyncio.gather(*(runtime.stop(inst, rel.spec.run.stop_timeout) for rel, inst in started),
                             return_exceptions=True)
    return CompatReport([results[i] for i in sorted(results)])


def _launch(rel: ReleaseUnderTest, scratch_url: str, images: ImageStore, workdir: Path,
            env_source: Mapping[str, str]) -> LaunchSpec:
    image = images.get(rel.image_id)
    tree = images.verified_tree(rel.image_id)
    env = release_env(rel.spec, image.env, env_source, database_url=scratch_url)
    iid = f"{rel.spec.service}-dbcheck-{rel.role}-{secrets.token_hex(3)}"
    return LaunchSpec(instance_id=iid, service=rel.spec.service, slot=f"dbcheck-{rel.role}", image_id=image.id,
                      tree=tree, command=list(image.command), env=env, instance_dir=workdir / iid)


async def _check(rel: ReleaseUnderTest, inst: Instance, runtime: Launcher, checker: Checker,
                 log: Callable[[str], None]) -> ReleaseResult:
    h = rel.spec.health
    healthy, why = await checker.wait_healthy(inst, path=h.path, interval=h.interval, timeout=h.timeout,
                                              healthy_threshold=h.healthy_threshold, deadline_s=h.start_timeout,
                                              is_alive=runtime.is_alive, exit_code=runtime.exit_code)
    if not healthy:
        return ReleaseResult(rel.role, rel.image_id, False, f"never became healthy on the migrated schema: {why}")
    label = f"the {rel.role} release"
    lines: list[str] = []

    def note(msg: str) -> None:
        lines.append(msg)
        log(msg)

    host = f"[{inst.host}]" if ":" in inst.host else inst.host
    failure = await checker.run_checks(f"http://{host}:{inst.port}", checks_for(rel.spec), label=label, log=note)
    if failure:
        return ReleaseResult(rel.role, rel.image_id, False, failure, lines)
    return ReleaseResult(rel.role, rel.image_id, True, "healthy, every check passed", lines)
