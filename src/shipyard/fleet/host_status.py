"""What `shipyard hosts` and `shipyard hosts check` say about each host, as plain values the
HostReports port returns, the engine joins with the store, and the API sends as JSON.

A report is what a host is now (reachable or why not, and its facts as its helper reads
them); a check is whether it could run one service's instances, step by step, so a host
that fails says which step and why instead of a bare "no"."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

CHECK_STEPS = ("ssh", "python", "helper", "disk", "ports", "image")
"""In the order they are tried: a step that cannot be tried because an earlier one failed is
"skip" with the reason, never a pass."""
OK, FAIL, SKIP = "ok", "fail", "skip"


@dataclass(frozen=True)
class HostReport:
    """One host as its helper answered just now (facts None when it could not be reached)."""

    name: str
    address: str
    reachable: bool
    error: str | None = None
    """Why it could not be reached or asked (the SSH or helper failure, in words)."""
    hint: str | None = None
    facts: dict[str, Any] | None = None
    """host.facts: helper_version, bundle_sha256, python, root, host {hostname, boot_id,
    cpu_count, load [1, 5, 15 min], disk {path, total, free}, memory {total, available}}."""
    seconds: float = 0.0
    """How long reaching and asking the host took."""

    @property
    def state(self) -> str:
        """up (its helper answered) | unreachable (no SSH) | no helper (SSH works, the helper does not)."""
        if self.facts is not None:
            return "up"
        return "no helper" if self.reachable else "unreachable"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"state": self.state}


@dataclass(frozen=True)
class CheckStep:
    name: str
    """One of CHECK_STEPS."""
    status: str
    """ok | fail | skip"""
    detail: str
    hint: str | None = None


@dataclass(frozen=True)
class HostCheck:
    """Whether one host can run the service: every step and, if any failed, the first failure."""

    name: str
    address: str
    steps: list[CheckStep] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(s.status != FAIL for s in self.steps)

    @property
    def reason(self) -> str | None:
        """The first failed step's detail (what `shipyard hosts check` prints after FAIL)."""
        failed = next((s for s in self.steps if s.status == FAIL), None)
        return None if failed is None else f"{failed.name}: {failed.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "ok": self.ok, "reason": self.reason,
                "steps": [asdict(s) for s in self.steps], "seconds": self.seconds}


def bytes_text(n: int | None) -> str:
    """1536 -> "1.5 KiB": disk and memory in the units `df -h` uses."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
