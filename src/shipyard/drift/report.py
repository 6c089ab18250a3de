"""What a drift scan found, as plain data: the API, the CLI table, the event log and the
state store all read the same DriftReport.

A probe that could not look (permission, a process vanishing mid-read) gives an
``unknown`` finding: it keeps the report from being clean, because "we could not tell"
must never read as "nothing is wrong"."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["release", "content", "process", "unmanaged", "unknown"]
Mode = Literal["metadata", "full"]
KINDS: tuple[Kind, ...] = ("release", "content", "process", "unmanaged", "unknown")

EXIT_CLEAN = 0
EXIT_DRIFT = 2
"""Terraform's convention (1 is left for errors: the scan itself could not run)."""


@dataclass(frozen=True)
class DriftFinding:
    kind: Kind
    instance_id: str | None
    service: str
    detail: str
    paths: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    host: str | None = None
    """The fleet host (by inventory name) it was found on; None on one machine."""

    def to_dict(self) -> dict[str, Any]:
        out = {
            "kind": self.kind,
            "instance_id": self.instance_id,
            "service": self.service,
            "detail": self.detail,
            "paths": list(self.paths),
            "evidence": self.evidence,
        }
        if self.host is not None:
            out["host"] = self.host
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DriftFinding:
        return cls(d["kind"], d.get("instance_id"), d["service"], d["detail"], list(d.get("paths") or []),
                   dict(d.get("evidence") or {}), d.get("host"))


@dataclass
class DriftReport:
    service: str
    scanned_at: float
    mode: Mode
    findings: list[DriftFinding] = field(default_factory=list)
    instances_scanned: int = 0
    files_checked: int = 0
    bytes_hashed: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    """What the scan saw that is not drift, e.g. a file whose mtime changed but whose content did not."""

    @property
    def clean(self) -> bool:
        return not self.findings

    @property
    def exit_code(self) -> int:
        return EXIT_CLEAN if self.clean else EXIT_DRIFT

    def count(self, kind: Kind) -> int:
        return sum(1 for f in self.findings if f.kind == kind)

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "scanned_at": self.scanned_at,
            "mode": self.mode,
            "clean": self.clean,
            "exit_code": self.exit_code,
            "counts": {k: self.count(k) for k in KINDS},
            "findings": [f.to_dict() for f in self.findings],
            "instances_scanned": self.instances_scanned,
            "files_checked": self.files_checked,
            "bytes_hashed": self.bytes_hashed,
            "seconds": self.seconds,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DriftReport:
        return cls(
            service=d["service"],
            scanned_at=float(d["scanned_at"]),
            mode=d["mode"],
            findings=[DriftFinding.from_dict(f) for f in d.get("findings") or []],
            instances_scanned=int(d.get("instances_scanned") or 0),
            files_checked=int(d.get("files_checked") or 0),
            bytes_hashed=int(d.get("bytes_hashed") or 0),
            seconds=float(d.get("seconds") or 0.0),
            notes=list(d.get("notes") or []),
        )
