"""Start and stop a `shipyard serve` process from Python (demo, tests, benchmarks):
its own session, output to a file, ready once its API answers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from shipyard.errors import ShipyardError
from shipyard.paths import StatePaths


class DaemonProcess:
    def __init__(self, state_dir: Path, env: dict[str, str] | None = None) -> None:
        self.paths = StatePaths.resolve(state_dir)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def output(self) -> Path:
        return self.paths.root / "daemon.out"

    def start(self, timeout: float = 20.0) -> DaemonProcess:
        self.paths.ensure()
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "shipyard", "serve", "--state-dir", str(self.paths.root)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, **(self.env or {})})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ShipyardError(f"the daemon exited with code {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError, ValueError, KeyError):
                if json.loads(self.paths.api.read_text())["pid"] == self.proc.pid:
                    return self
            time.sleep(0.05)
        raise ShipyardError(f"the daemon did not come up within {timeout:g}s:\n{self.tail()}")

    def tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.output.read_text(errors="replace").splitlines()[-n:])
        return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop the daemon only (instances and routers are left running, by design)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def cli_argv() -> list[str]:
    """The `shipyard` command as a user runs it: the launcher installed beside this
    interpreter (bin/shipyard, which sends `rollback` without starting Python), else the
    Python CLI (a source tree that was never installed)."""
    launcher = Path(sys.executable).with_name("shipyard")
    return [str(launcher)] if launcher.is_file() else [sys.executable, "-m", "shipyard"]
