"""What the controller needs from a runtime. One implementation per file (local.py: OS processes)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Instance:
    """One running copy of an image. (pid, start_time) identifies the process across
    daemon restarts: a recycled pid has a different start time."""

    id: str
    service: str
    slot: str
    image_id: str
    host: str
    port: int
    pid: int
    start_time: int
    log_path: str
    data_dir: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Instance:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one instance; built by the controller from spec + image."""

    instance_id: str
    service: str
    slot: str
    image_id: str
    tree: Path                   # read-only, already verified image tree (cwd of the process)
    command: list[str]           # may contain ${PORT} and ${SHIPYARD_DATA_DIR}
    env: dict[str, str]          # image env + run env + secret env, already merged
    instance_dir: Path           # holds `log` and `data/`
    host: str = "127.0.0.1"


class Runtime(Protocol):
    async def start(self, launch: LaunchSpec) -> Instance:
        """Start the process and return at once (readiness is the health checker's job)."""
        ...

    async def stop(self, instance: Instance, timeout: float) -> None:
        """SIGTERM the process group, SIGKILL after `timeout`; returns when it is gone."""
        ...

    def is_alive(self, instance: Instance) -> bool:
        """True while the very same process (pid and start time) is running."""
        ...

    def exit_code(self, instance: Instance) -> int | None:
        """How it ended, when known (None while running or when not ours to know)."""
        ...
