"""Host key decisions and the trust_new_hosts record, on files only (the real handshakes are
in tests/integration/fleet); the command string sent to the login shell; identity errors."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import asyncssh
import pytest

from shipyard.runtime.ssh.channels import remote_command, wrapped_command
from shipyard.runtime.ssh.errors import HostKeyChanged, HostKeyUnknown, SshIdentityError
from shipyard.runtime.ssh.hostkeys import HostKeyCheck, read_known_hosts
from shipyard.runtime.ssh.options import SshOptions, load_identity


def key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519").convert_to_public()


def line(address: str, k: asyncssh.SSHKey) -> str:
    return f"{address} {k.export_public_key().decode().strip()}\n"


def test_unknown_key_without_trust_is_refused_naming_the_fingerprint(tmp: Path) -> None:
    k = key()
    check = HostKeyCheck("web-1", "10.0.0.1", 22, tmp / "missing_known_hosts", trust_new=False)
    assert check.accept(k) is False
    assert isinstance(check.refusal, HostKeyUnknown)
    assert k.get_fingerprint("sha256") in str(check.refusal) and "web-1 (10.0.0.1)" in str(check.refusal)
    assert check.record() is None and not (tmp / "missing_known_hosts").exists()


def test_trust_records_the_first_key_once_with_the_port_pattern(tmp: Path) -> None:
    path = tmp / "sub" / "known_hosts"
    k = key()
    check = HostKeyCheck("web-1", "10.0.0.1", 2222, path, trust_new=True)
    assert check.accept(k) is True
    fact = check.record()
    assert fact is not None and fact.fingerprint == k.get_fingerprint("sha256") and fact.port == 2222
    text = path.read_text()
    assert text.startswith("[10.0.0.1]:2222 ssh-ed25519 ") and "trust_new_hosts web-1" in text
    fp = k.get_fingerprint("sha256")
    assert {x.get_fingerprint("sha256") for x in read_known_hosts(path).match("10.0.0.1", "10.0.0.1", 2222)[0]} == {fp}
    again = HostKeyCheck("web-1", "10.0.0.1", 2222, path, trust_new=True)
    assert {x.get_fingerprint("sha256") for x in again.expected} == {fp}   # asyncssh accepts a listed key without asking accept()


def test_a_key_recorded_meanwhile_by_another_process_wins_over_ours(tmp: Path) -> None:
    path = tmp / "known_hosts"
    path.write_text("# no newline at the end")
    check = HostKeyCheck("web-2", "10.0.0.2", 22, path, trust_new=True)
    assert check.accept(key())
    theirs = key()
    with open(path, "a") as f:
        f.write("\n" + line("10.0.0.2", theirs))
    with pytest.raises(HostKeyChanged, match="CHANGED"):
        check.record()
    assert path.read_text().count("10.0.0.2") == 1


def test_a_listed_key_that_differs_is_a_change_never_trusted(tmp: Path) -> None:
    path = tmp / "known_hosts"
    old, new = key(), key()
    path.write_text(line("10.0.0.3", old))
    check = HostKeyCheck("web-3", "10.0.0.3", 22, path, trust_new=True)
    assert check.accept(new) is False and isinstance(check.refusal, HostKeyChanged)
    assert old.get_fingerprint("sha256") in str(check.refusal)
    assert new.get_fingerprint("sha256") in str(check.refusal)


def test_commands_are_argv_lists_quoted_for_the_login_shell() -> None:
    argv = ["printf", "%s\n", "$(id)", "a b", "it's"]
    assert shlex.split(remote_command(argv)) == argv
    assert wrapped_command(argv).endswith("; exec " + remote_command(argv))
    with pytest.raises(TypeError, match="never a shell string"):
        remote_command("rm -rf /")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        remote_command([])


def test_identity_problems_are_configuration_errors(tmp: Path) -> None:
    opts = SshOptions(user="deploy", known_hosts=tmp / "kh", identity=tmp / "nope")
    with pytest.raises(SshIdentityError, match="does not exist"):
        load_identity(opts)
    locked = tmp / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(locked)], check=True)
    with pytest.raises(SshIdentityError, match="passphrase") as e:
        load_identity(SshOptions(user="deploy", known_hosts=tmp / "kh", identity=locked))
    assert "ssh-keygen" in str(e.value)
    garbage = tmp / "garbage"
    garbage.write_text("not a key")
    with pytest.raises(SshIdentityError, match="not a private key"):
        load_identity(SshOptions(user="deploy", known_hosts=tmp / "kh", identity=garbage))
