"""Choosing the enforcement mode, and the argv / grants each mode launches with (no processes)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from shipyard.runtime import landlock
from shipyard.runtime.sandbox import (
    DEV_FILES,
    ENV_VAR,
    LANDLOCK_WRAPPER,
    Enforcement,
    EnforcementUnavailable,
    LandlockSandbox,
    ProbeResult,
    Sandbox,
    bubblewrap_argv,
    bwrap_exit_code,
    choose_enforcement,
    landlock_grants,
)

TREE = Path("/srv/shipyard/images/trees/abc123")
DATA = Path("/srv/shipyard/instances/web-1/data")
LOG = Path("/srv/shipyard/instances/web-1/log")


def fake_probes(landlock_ok: bool, bwrap_ok: bool, called: list[str] | None = None
                ) -> dict[str, Callable[[], ProbeResult]]:
    def probe(mode: str, ok: bool, good: str, bad: str) -> Callable[[], ProbeResult]:
        def run() -> ProbeResult:
            if called is not None:
                called.append(mode)
            return ProbeResult(ok, good if ok else bad)
        return run

    return {
        "landlock": probe("landlock", landlock_ok, "landlock ABI 7", "landlock unavailable (ENOSYS)"),
        "bubblewrap": probe("bubblewrap", bwrap_ok, "bubblewrap 0.8.0", "bwrap not installed"),
    }


@pytest.fixture(autouse=True)
def no_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def test_auto_takes_landlock_first_without_probing_bubblewrap() -> None:
    called: list[str] = []
    assert choose_enforcement(probes=fake_probes(True, True, called)) == Enforcement("landlock", "landlock ABI 7")
    assert called == ["landlock"]


def test_auto_falls_back_to_bubblewrap_then_verify_only_with_every_reason() -> None:
    assert choose_enforcement(probes=fake_probes(False, True)) == Enforcement("bubblewrap", "bubblewrap 0.8.0")
    chosen = choose_enforcement(probes=fake_probes(False, False))
    assert chosen == Enforcement("verify-only", "verify-only: landlock unavailable (ENOSYS), bwrap not installed")


def test_forced_mode_that_does_not_work_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "bubblewrap")
    with pytest.raises(EnforcementUnavailable) as raised:
        choose_enforcement(probes=fake_probes(True, False))
    assert raised.value.message == ("enforcement mode bubblewrap (SHIPYARD_ENFORCEMENT=bubblewrap) does not work "
                                    "on this machine: bwrap not installed")
    assert raised.value.hint is not None and ENV_VAR in raised.value.hint
    with pytest.raises(EnforcementUnavailable, match=r"landlock \(asked for explicitly\).*ENOSYS"):
        choose_enforcement("landlock", probes=fake_probes(False, True))


def test_forced_mode_that_works_is_used_even_when_a_stronger_one_would(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, " Bubblewrap ")
    assert choose_enforcement(probes=fake_probes(True, True)).mode == "bubblewrap"
    assert choose_enforcement("landlock", probes=fake_probes(True, True)).mode == "landlock"  # argument wins


def test_verify_only_can_be_forced_without_probing() -> None:
    called: list[str] = []
    chosen = choose_enforcement("verify-only", probes=fake_probes(True, True, called))
    assert chosen == Enforcement("verify-only", "verify-only: asked for explicitly") and called == []


def test_unknown_mode_lists_the_valid_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "selinux")
    with pytest.raises(EnforcementUnavailable, match="unknown enforcement mode 'selinux'") as raised:
        choose_enforcement(probes=fake_probes(True, True))
    assert raised.value.hint == f"set {ENV_VAR} to one of auto, landlock, bubblewrap, verify-only"


def test_landlock_grants_data_tmp_shm_own_proc_log_and_harmless_devices() -> None:
    dirs, files, notes = landlock_grants(TREE, DATA, LOG, {"TMPDIR": "/var/cache/svc-tmp"})
    assert dirs == [str(DATA), "/tmp", "/dev/shm", "/var/cache/svc-tmp", "/proc/self"]
    assert files == [str(LOG), *DEV_FILES] and "/dev/null" in files
    assert not any(f.startswith("/dev/sd") or f.startswith("/dev/vd") for f in files)
    assert notes == []


def test_a_place_holding_the_tree_is_not_granted_and_the_log_says_why() -> None:
    tree = Path("/tmp/sy123/images/trees/abc")
    dirs, _, notes = landlock_grants(tree, Path("/tmp/sy123/instances/w/data"), LOG, {"TMPDIR": str(tree / "t")})
    assert "/tmp" not in dirs and not any(d.startswith(str(tree)) for d in dirs)
    assert dirs == ["/tmp/sy123/instances/w/data", "/dev/shm", "/proc/self"]
    assert len(notes) == 2 and notes[0].startswith("/tmp is not writable for this instance")


def test_relative_tmpdir_and_duplicates_are_ignored() -> None:
    dirs, _, _ = landlock_grants(TREE, DATA, LOG, {"TMPDIR": "tmp"})
    assert dirs == [str(DATA), "/tmp", "/dev/shm", "/proc/self"]
    dirs, _, _ = landlock_grants(TREE, DATA, LOG, {"TMPDIR": "/tmp/"})
    assert dirs.count("/tmp") == 1


def test_landlock_sandbox_puts_the_wrapper_before_the_unchanged_command() -> None:
    sandbox = LandlockSandbox(Enforcement("landlock", "landlock ABI 7"))
    confined = sandbox.confine(["/usr/bin/python3", "app.py"], tree=TREE, data_dir=DATA, log_path=LOG, env={})
    argv = confined.argv
    assert argv[:4] == [sys.executable, "-I", "-S", str(LANDLOCK_WRAPPER)]
    assert argv[-3:] == ["--", "/usr/bin/python3", "app.py"]
    assert argv[argv.index("--writable") + 1] == str(DATA) and "--writable-file" in argv
    assert confined.pass_fds == () and confined.notes == ["enforcement: landlock ABI 7"]


def test_verify_only_launches_the_command_as_is() -> None:
    confined = Sandbox(Enforcement("verify-only", "verify-only: x")).confine(
        ["/bin/app"], tree=TREE, data_dir=DATA, log_path=LOG, env={})
    assert confined.argv == ["/bin/app"] and confined.notes == ["enforcement: verify-only: x"]


def test_bubblewrap_argv_makes_only_the_tree_read_only_and_keeps_instances_independent() -> None:
    argv = bubblewrap_argv("/usr/bin/bwrap", TREE, info_fd=7)
    assert argv[0] == "/usr/bin/bwrap" and argv[-1] == "--"
    joined = " ".join(argv)
    assert joined.index("--dev-bind / /") < joined.index(f"--ro-bind {TREE} {TREE}")
    assert "--cap-drop ALL" in joined and f"--chdir {TREE}" in joined and "--info-fd 7" in joined
    assert "--new-session" in argv and "--die-with-parent" not in argv


def test_bwrap_exit_codes_map_signals_back_to_negative_numbers() -> None:
    assert [bwrap_exit_code(c) for c in (0, 3, 128, 130, 137, 143, 192, 193, 255)] == [
        0, 3, 128, -2, -9, -15, -64, 193, 255]


def test_handled_rights_follow_the_kernel_abi() -> None:
    assert not landlock.handled_rights(1) & (landlock.ACCESS_FS_REFER | landlock.ACCESS_FS_TRUNCATE)
    assert landlock.handled_rights(2) & landlock.ACCESS_FS_REFER
    assert landlock.handled_rights(7) == landlock.handled_rights(3)
    assert landlock.handled_rights(7) & landlock.ACCESS_FS_WRITE_FILE
    assert not landlock.handled_rights(7) & (1 << 2)  # READ_FILE: reads are never restricted


@pytest.mark.parametrize("argv", [[], ["--", ], ["--writable"], ["--bogus", "x", "--", "true"]])
def test_wrapper_refuses_bad_arguments_before_confining_anything(argv: list[str],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert landlock.main(argv) == 2
    assert "usage:" in capsys.readouterr().err
