"""The SSH connection layer against real sshd on five namespace hosts: one shared
connection per host, host keys refused or trusted as the spec says, reconnects after a
drop, hung commands killed on the host."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import asyncssh
import pytest
from ssh_support import options_for, targets

from shipyard.runtime.ssh.connections import SshConnections, SshTarget
from shipyard.runtime.ssh.errors import (
    HostKeyChanged,
    HostKeyUnknown,
    HostUnreachable,
    SshAuthFailed,
    SshCommandTimeout,
    SshConnectionLost,
)
from support.netns_hosts import NetnsFleet, NetnsHost

pytestmark = pytest.mark.timeout(120)


def fingerprint(h: NetnsHost) -> str:
    return asyncssh.import_public_key(h.public_key_line()).get_fingerprint("sha256")


def target(h: NetnsHost) -> SshTarget:
    return SshTarget(h.name, h.address)


async def test_one_shared_connection_per_host_runs_argv_on_every_host(fleet5: NetnsFleet) -> None:
    async with SshConnections(options_for(fleet5)) as pool:
        assert all(e is None for e in (await pool.connect_all(targets(fleet5))).values())
        nasty = ["a b", "it's", "$(touch /tmp/pwned)", "; rm -rf /", "*"]
        results = await asyncio.gather(*(
            pool.host(t).run(["sh", "-c", 'hostname; printf "%s|" "$@"; cat; echo err >&2; exit 3', "sh", *nasty],
                             stdin=b"from stdin") for t in targets(fleet5)))
        for h, r in zip(fleet5.hosts, results, strict=True):
            assert r.exit_status == 3 and not r.ok
            assert r.stdout == f"{h.name}\n".encode() + "|".join(nasty).encode() + b"|from stdin"
            assert r.stderr == b"err\n"            # the pid line the layer reads first is not in it

        # fifteen callers at once on one host: channels of the same single connection, at most
        # sshd's MaxSessions (10) open at once, the others queued rather than refused
        h = fleet5.hosts[0]
        hc = pool.host(target(h))
        assert pool.host(target(h)) is hc
        began = time.monotonic()
        busy = [asyncio.create_task(hc.run(["sleep", "0.6"])) for _ in range(15)]
        await asyncio.sleep(0.3)
        assert len(h.sshd_sessions()) == 1          # one sshd serving one connection
        assert len([p for p in h.pids() if _cmd(p) == "sleep 0.6 "]) == 10
        assert all(r.ok for r in await asyncio.gather(*busy))
        assert 1.2 <= time.monotonic() - began < 4
        assert hc.connects == 1 and hc.drops == 0
    # a clean close: every host's sshd ends the session it served
    deadline = time.monotonic() + 5
    while any(x.sshd_sessions() for x in fleet5.hosts) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert [x.name for x in fleet5.hosts if x.sshd_sessions()] == []
    assert hc.state == "closed"


async def test_unknown_host_key_is_refused_and_nothing_recorded(fleet5: NetnsFleet) -> None:
    fleet5.known_hosts.write_text(f"{fleet5.hosts[1].address} {fleet5.hosts[1].public_key_line()}\n")
    before = fleet5.known_hosts.read_text()
    h = fleet5.hosts[0]
    async with SshConnections(options_for(fleet5)) as pool:
        began = time.monotonic()
        with pytest.raises(HostKeyUnknown) as refused:
            await pool.host(target(h)).run(["true"])
        assert time.monotonic() - began < 3        # refused at once, not after reconnect_wait
    text = str(refused.value)
    assert h.name in text and h.address in text and "ssh-ed25519" in text and fingerprint(h) in text
    assert "trust_new_hosts" in text
    assert fleet5.known_hosts.read_text() == before and pool.trusted == []
    assert "Accepted publickey" not in (h.dir / "sshd.log").read_text()   # refused before logging in


async def test_changed_host_key_is_refused_even_with_trust_new_hosts(fleet5: NetnsFleet) -> None:
    h = fleet5.hosts[2]
    old = fingerprint(h)
    fleet5.change_host_key(h)
    before = fleet5.known_hosts.read_text()
    for trust in (False, True):
        async with SshConnections(options_for(fleet5, trust_new_hosts=trust)) as pool:
            with pytest.raises(HostKeyChanged) as refused:
                await pool.host(target(h)).run(["true"])
            assert pool.trusted == []
        text = str(refused.value)
        assert "CHANGED" in text and h.name in text and old in text and fingerprint(h) in text
        assert "ssh-keygen -R" in text
    assert fleet5.known_hosts.read_text() == before


async def test_trust_new_hosts_records_first_key_then_verifies_against_it(fleet5: NetnsFleet) -> None:
    fleet5.known_hosts.write_text("")
    seen = []
    opts = options_for(fleet5, trust_new_hosts=True)
    async with SshConnections(opts, on_trust=seen.append) as pool:
        assert all(e is None for e in (await pool.connect_all(targets(fleet5))).values())
    assert sorted(f.host for f in seen) == sorted(h.name for h in fleet5.hosts)
    by_host = {f.host: f for f in pool.trusted}
    for h in fleet5.hosts:
        assert by_host[h.name].fingerprint == fingerprint(h) and by_host[h.name].key_type == "ssh-ed25519"
    lines = fleet5.known_hosts.read_text().splitlines()
    assert len(lines) == 5 and all("shipyard trust_new_hosts" in line for line in lines)

    # a second daemon without the option verifies against what was recorded, and records nothing
    async with SshConnections(dataclasses.replace(opts, trust_new_hosts=False)) as again:
        assert (await again.host(targets(fleet5)[0]).run(["true"])).ok
        assert again.trusted == []
    # and the recorded key is not a blank cheque: the host changes key, it is refused
    fleet5.change_host_key(fleet5.hosts[0])
    async with SshConnections(opts) as third:
        with pytest.raises(HostKeyChanged):
            await third.host(targets(fleet5)[0]).run(["true"])


async def test_killed_sshd_drops_the_call_in_flight_and_the_next_call_reconnects(fleet5: NetnsFleet) -> None:
    h = fleet5.hosts[0]
    async with SshConnections(options_for(fleet5)) as pool:
        hc = pool.host(target(h))
        in_flight = asyncio.create_task(hc.run(["sleep", "30"]))
        await asyncio.sleep(0.5)
        assert fleet5.drop_connections(h)
        with pytest.raises(SshConnectionLost, match="dropped while the command `sleep 30`"):
            await asyncio.wait_for(in_flight, 5)
        r = await hc.run(["hostname"])
        assert r.stdout == f"{h.name}\n".encode()
        assert hc.drops == 1 and hc.connects == 2 and len(hc.delays) == 1


async def test_reconnect_backs_off_while_sshd_is_down_then_a_call_gets_through(fleet5: NetnsFleet) -> None:
    h = fleet5.hosts[1]
    opts = options_for(fleet5)
    async with SshConnections(opts) as pool:
        hc = pool.host(target(h))
        assert (await hc.run(["true"])).ok
        fleet5.stop_sshd(h)
        fleet5.drop_connections(h)
        await asyncio.sleep(1.6)                   # refused attempts: 0.05-0.1, 0.1-0.2, 0.2-0.4, 0.4-0.8, ...
        assert hc.state == "disconnected" and len(hc.delays) >= 4
        for n, d in enumerate(hc.delays):
            top = opts.backoff.ceiling(n)
            assert top * (1 - opts.backoff.jitter) <= d <= top <= opts.backoff.cap
        assert hc.delays[3] > hc.delays[0]
        waiting = asyncio.create_task(hc.run(["hostname"]))   # waits for the reconnect
        await asyncio.sleep(0.3)
        fleet5.start_sshd(h)
        assert (await asyncio.wait_for(waiting, 5)).stdout == f"{h.name}\n".encode()
        assert hc.state == "connected"


async def test_link_down_is_detected_by_keepalive_and_link_up_reconnects(fleet5: NetnsFleet) -> None:
    h = fleet5.hosts[3]
    async with SshConnections(options_for(fleet5, connect_timeout=1)) as pool:
        hc = pool.host(target(h))
        assert (await hc.run(["true"])).ok
        in_flight = asyncio.create_task(hc.run(["sleep", "30"]))
        await asyncio.sleep(0.3)
        fleet5.cut_network(h)
        began = time.monotonic()
        with pytest.raises(SshConnectionLost):
            await asyncio.wait_for(in_flight, 10)
        assert time.monotonic() - began < 3        # keepalive 0.3 s x 2, not TCP's minutes
        with pytest.raises(HostUnreachable, match="within 0.5s"):
            await hc.run(["true"], wait=0.5)
        fleet5.restore_network(h)
        assert (await hc.run(["hostname"], wait=10)).stdout == f"{h.name}\n".encode()


async def test_hung_command_times_out_and_is_killed_on_the_host(fleet5: NetnsFleet) -> None:
    h = fleet5.hosts[4]
    async with SshConnections(options_for(fleet5)) as pool:
        hc = pool.host(target(h))
        began = time.monotonic()
        with pytest.raises(SshCommandTimeout, match="did not finish within 0.5s"):
            await hc.run(["sh", "-c", "sleep 600 & sleep 601; wait"], timeout=0.5)
        assert time.monotonic() - began < 3
        deadline = time.monotonic() + 3
        while any("sleep 60" in _cmd(p) for p in h.pids()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not [p for p in h.pids() if "sleep 60" in _cmd(p)]   # the whole process group
        assert (await hc.run(["true"])).ok                          # the connection is still good
        assert hc.drops == 0


async def test_long_lived_process_streams_both_ways(fleet5: NetnsFleet) -> None:
    h = fleet5.hosts[0]
    async with SshConnections(options_for(fleet5)) as pool:
        proc = await pool.host(target(h)).open_process(
            ["python3", "-u", "-c", "import sys\nfor line in sys.stdin: print(line.strip().upper(), flush=True)"])
        assert proc.pid is not None
        for word in (b"ping", b"pong"):
            proc.stdin.write(word + b"\n")
            await proc.stdin.drain()
            assert await asyncio.wait_for(proc.stdout.readline(), 5) == word.upper() + b"\n"
        proc.stdin.write_eof()
        assert (await proc.wait(5)).exit_status == 0
        await proc.close()

        sleeper = await pool.host(target(h)).open_process(["sleep", "600"])
        await sleeper.send_signal("TERM")
        result = await sleeper.wait(5)
        assert result.exit_status != 0 or result.exit_signal
        await sleeper.close()


async def test_long_lived_process_reports_a_dropped_connection(fleet5: NetnsFleet) -> None:
    h = fleet5.hosts[1]
    async with SshConnections(options_for(fleet5)) as pool:
        hc = pool.host(target(h))
        proc = await hc.open_process(["cat"])
        proc.stdin.write(b"x\n")
        assert await asyncio.wait_for(proc.stdout.readline(), 5) == b"x\n"
        fleet5.drop_connections(h)
        with pytest.raises(SshConnectionLost, match="while the process `cat`"):
            await proc.wait(5)
        assert proc.connection_lost
        await proc.close()
        again = await hc.open_process(["cat"])      # on the new connection
        again.stdin.write(b"y\n")
        assert await asyncio.wait_for(again.stdout.readline(), 5) == b"y\n"
        await again.close()


async def test_wrong_identity_is_refused_at_once_without_password_prompt(fleet5: NetnsFleet) -> None:
    other = fleet5.dir / "other_key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(other))
    async with SshConnections(options_for(fleet5, identity=other)) as pool:
        began = time.monotonic()
        with pytest.raises(SshAuthFailed, match="refused root's key"):
            await pool.host(targets(fleet5)[0]).run(["true"])
        assert time.monotonic() - began < 3


def _cmd(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""
