"""The daemon's log file on a full disk: lines it cannot write are held and written, after
one note, once it can; nothing is printed to stderr about it (no "--- Logging error ---")."""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest

from shipyard.server.daemon_log import ResilientFileHandler


def test_lines_are_held_while_the_disk_is_full_and_written_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "daemon.log"
    h = ResilientFileHandler(str(path))
    log = logging.getLogger("test.daemon_log")
    log.propagate = False
    log.addHandler(h)
    try:
        log.warning("before")
        real_open = h._open

        def full() -> object:
            raise OSError(errno.ENOSPC, "No space left on device")
        h._drop_stream()
        monkeypatch.setattr(h, "_open", full)
        for i in range(3):
            log.error("during %d", i)
        monkeypatch.setattr(h, "_open", real_open)
        log.warning("after")
    finally:
        log.removeHandler(h)
        h.close()
    lines = path.read_text().splitlines()
    assert lines[0] == "before"
    assert lines[1].startswith("--- 3 log line(s) were held while")
    assert lines[2:] == ["during 0", "during 1", "during 2", "after"]
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err
