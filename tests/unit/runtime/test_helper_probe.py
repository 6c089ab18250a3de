"""Reading the one-command probe of a host's python3 and helper bundle (pure logic: the
CommandResults are what sshd sends back for each case)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shipyard.runtime.ssh.channels import CommandResult
from shipyard.runtime.ssh.helper_session import HelperUnavailable, parse_probe, probe_argv


def result(status: int | None, out: bytes = b"", err: bytes = b"") -> CommandResult:
    return CommandResult("h1", ("python3",), status, None, out, err, 0.01)


def test_present_and_absent_bundles() -> None:
    assert parse_probe("h1", "python3", result(0, b"3.11 1\n")) is True
    assert parse_probe("h1", "python3", result(0, b"3.13 0\n")) is False


def test_no_python3_says_what_to_install() -> None:
    with pytest.raises(HelperUnavailable, match="h1 has no python3") as e:
        parse_probe("h1", "python3", result(127, err=b"sh: 1: exec: python3: not found\n"))
    assert e.value.hint is not None and "python3 >= 3.11" in e.value.hint and e.value.host == "h1"


@pytest.mark.parametrize("version", ["3.9", "3.10", "2.7"])
def test_a_python_too_old_is_refused_with_its_version(version: str) -> None:
    with pytest.raises(HelperUnavailable, match=f"needs Python 3.11 or later, h1's python3 is {version}"):
        parse_probe("h1", "python3", result(0, f"{version} 1\n".encode()))


def test_a_broken_python_is_reported_with_its_stderr() -> None:
    with pytest.raises(HelperUnavailable, match="could not be asked its version: Fatal Python error"):
        parse_probe("h1", "python3", result(1, err=b"Fatal Python error: init_fs_encoding\n"))


def test_the_probe_runs_under_a_real_python(tmp_path: object) -> None:
    argv = probe_argv("0" * 64, sys.executable)
    out = subprocess.run(argv, capture_output=True, check=True).stdout
    assert parse_probe("local", sys.executable, result(0, out)) is False
