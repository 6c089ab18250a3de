"""fsutil.write_atomic on a real file system: the new contents or the old, never a temp file
left behind, the mode asked for (a secret never readable by others)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from shipyard.fsutil import write_atomic


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("durable", [False, True])
def test_replaces_the_contents_with_the_mode_asked_for(tmp_path: Path, durable: bool) -> None:
    target = tmp_path / "deep" / "state.json"          # missing parents are made
    write_atomic(target, "first", durable=durable)
    assert (target.read_text(), mode_of(target)) == ("first", 0o600)      # owner-only unless asked
    write_atomic(target, b"\x00second" * 10000, mode=0o644, durable=durable)
    assert target.read_bytes() == b"\x00second" * 10000 and mode_of(target) == 0o644
    assert os.listdir(target.parent) == ["state.json"]


def test_a_read_only_file_is_replaced_too(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    write_atomic(target, b"one", mode=0o444)
    write_atomic(target, b"two", mode=0o444)
    assert (target.read_bytes(), mode_of(target)) == (b"two", 0o444)


def test_a_failed_rename_keeps_what_was_there_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_text("kept")
    with pytest.raises(OSError):
        write_atomic(target, b"new")
    assert (target / "inside").read_text() == "kept"
    assert sorted(os.listdir(tmp_path)) == ["taken"]
