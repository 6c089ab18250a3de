"""Instances through the remote helper: detached so they outlive it (and the SSH channel),
known by pid + start time, exit codes recorded by their supervisor, stopped as a group;
logs, listeners and the process facts the drift scan compares."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from shipyard.drift.processes import ExpectedProcess, LiveProcess, compare
from shipyard.fleet.remote import bundle
from shipyard.fleet.remote.client import HelperError, spawn_local
from shipyard.images.objects import ObjectStore
from shipyard.procfs import read_proc_stat
from support import remote_helper
from support.remote_helper import PYTHON, alive, make_image, ship

root = remote_helper.root      # fixtures
spawn = remote_helper.spawn


async def test_an_instance_runs_from_its_read_only_tree(spawn: Any, root: Path) -> None:
    store = ObjectStore(root / "local" / "objects")
    image_id, data, manifest = make_image(root, {"app/main.py": b"print('v1')\n"}, store)
    client, _ = await spawn()
    await ship(client, store, manifest)
    tree = (await client.materialize(image_id, data))["tree"]
    started = await client.start("web-1", manifest["command"], {"PATH": "/usr/bin:/bin"}, tree)
    assert os.readlink(f"/proc/{started.pid}/cwd") == tree
    [state] = await client.status([(started.pid, started.start_time)])
    assert state.state == "running"
    assert (await client.stop(started.pid, started.start_time, timeout=5)).exit_code == -signal.SIGTERM
    assert (await client.verify(image_id, "full")).clean       # running it wrote nothing into the tree


async def test_an_instance_outlives_its_helper_and_is_stopped_by_pid_and_start_time(spawn: Any, root: Path) -> None:
    client, helper = await spawn()
    cwd = root / "cwd"
    cwd.mkdir()
    code = "import os, sys, time; print('up', os.environ['GREETING'], os.getcwd(), flush=True); time.sleep(120)"
    started = await client.start("web-1", [PYTHON, "-c", code], {"GREETING": "hi"}, str(cwd))
    pid, st = started.pid, started.start_time
    assert alive(pid, st)
    assert os.getpgid(pid) == pid and os.getsid(pid) == pid       # its own session and group
    assert os.getsid(pid) != os.getsid(helper.pid)

    helper.kill()                                                 # the SSH connection drops
    await helper.wait()
    await client.aclose()
    time.sleep(0.2)
    assert alive(pid, st)

    client, _ = await spawn()
    [state] = await client.status([(pid, st)])
    assert state.state == "running" and state.exit_code is None
    [other] = await client.status([(pid, st + 1)])               # a recycled pid is not ours
    assert other.state == "gone"
    assert (await client.stop(pid, st + 1, timeout=1)).how == "not running"
    assert alive(pid, st)

    deadline = time.monotonic() + 10
    while b"up hi" not in (chunk := await client.logs("web-1", tail=4096)).data and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert f"up hi {cwd}".encode() in chunk.data

    stopped = await client.stop(pid, st, timeout=5)
    assert stopped.how == "SIGTERM" and stopped.state == "exited" and stopped.exit_code == -signal.SIGTERM
    assert not alive(pid, st)
    [state] = await client.status([(pid, st)])
    assert state.state == "exited" and state.exit_code == -signal.SIGTERM


async def test_exit_code_of_an_instance_that_exits_by_itself(spawn: Any, root: Path) -> None:
    client, helper = await spawn()
    cwd = root / "cwd"
    cwd.mkdir()
    started = await client.start("job-1", [PYTHON, "-c", "import time; time.sleep(0.5); raise SystemExit(3)"], {},
                                 str(cwd))
    helper.kill()                                # the exit is recorded with no helper running
    await helper.wait()
    await client.aclose()
    client, _ = await spawn()
    deadline = time.monotonic() + 10
    while (state := (await client.status([(started.pid, started.start_time)]))[0]).state != "exited":
        assert time.monotonic() < deadline, state
        await asyncio.sleep(0.05)
    assert state.exit_code == 3
    log = (await client.logs("job-1", offset=0)).data.decode()
    assert "exited with code 3" in log


async def test_stop_escalates_to_sigkill_for_the_whole_group(spawn: Any, root: Path) -> None:
    client, _ = await spawn()
    cwd = root / "cwd"
    cwd.mkdir()
    code = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)']); print('ready', flush=True); "
            "time.sleep(120)")
    started = await client.start("stubborn", [PYTHON, "-c", code], {}, str(cwd))
    deadline = time.monotonic() + 10
    while b"ready" not in (await client.logs("stubborn", tail=100)).data:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    stopped = await client.stop(started.pid, started.start_time, timeout=0.3)
    assert stopped.how.startswith("SIGKILL") and stopped.exit_code == -signal.SIGKILL
    members = [int(p) for p in os.listdir("/proc") if p.isdigit()
               and (s := read_proc_stat(int(p))) is not None and s.pgrp == started.pid and not s.dead]
    assert members == []


async def test_logs_from_an_offset_and_a_tail(spawn: Any, root: Path) -> None:
    client, _ = await spawn()
    cwd = root / "cwd"
    cwd.mkdir()
    lines = "".join(f"line {i}\n" for i in range(1000))
    started = await client.start("chatty", [PYTHON, "-c", f"import sys; sys.stdout.write({lines!r})"], {}, str(cwd))
    deadline = time.monotonic() + 10
    while (await client.status([(started.pid, started.start_time)]))[0].state != "exited":
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    whole = b""
    offset = 0
    while True:
        chunk = await client.logs("chatty", offset=offset, limit=1000)
        if not chunk.data:
            break
        whole += chunk.data
        offset = chunk.next_offset
    assert lines.encode() in whole and offset == chunk.file_size
    tail = await client.logs("chatty", tail=200)
    assert tail.offset == tail.file_size - 200 and tail.data == whole[-200:]
    with pytest.raises(HelperError) as err:
        await client.logs("chatty", offset=0, tail=1)
    assert err.value.code == "bad_request"
    with pytest.raises(HelperError) as err:
        await client.logs("nobody", tail=1)
    assert err.value.code == "not_found"


async def test_start_failures_are_clear_replies(spawn: Any, root: Path) -> None:
    client, _ = await spawn()
    with pytest.raises(HelperError) as err:
        await client.start("web-1", ["/no/such/program"], {}, str(root))
    assert err.value.code == "start_failed" and "/no/such/program" in err.value.message
    with pytest.raises(HelperError) as err:
        await client.start("web-1", ["true"], {}, str(root / "nowhere"))
    assert err.value.code == "not_found"
    with pytest.raises(HelperError) as err:
        await client.start("../escape", ["true"], {}, str(root))
    assert err.value.code == "bad_request"


async def test_listeners_name_the_owning_pid(spawn: Any, root: Path) -> None:
    client, _ = await spawn()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = (f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); "
            "print('listening', flush=True); time.sleep(120)")
    started = await client.start("listener", [PYTHON, "-c", code], {}, str(root))
    deadline = time.monotonic() + 10
    while b"listening" not in (await client.logs("listener", tail=100)).data:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    found = await client.listeners([port])
    assert found["listeners"] == [{"address": "127.0.0.1", "port": port, "pids": [started.pid]}]
    await client.stop(started.pid, started.start_time, timeout=2)
    assert (await client.listeners([port]))["listeners"] == []


async def test_inspect_gives_argv_and_env_for_drift_but_never_a_secret_value(spawn: Any, root: Path) -> None:
    client, _ = await spawn()
    argv = [PYTHON, "-c", "import time; time.sleep(120)"]
    env = {"PATH": "/usr/bin:/bin", "APP_MODE": "blue", "DB_PASSWORD": "hunter2"}
    started = await client.start("web-1", argv, env, str(root))
    seen = await client.inspect(started.pid, started.start_time, ["PATH", "APP_MODE"])
    assert seen["state"] == "running" and seen["argv"] == argv
    assert seen["env"] == {"PATH": "/usr/bin:/bin", "APP_MODE": "blue", "DB_PASSWORD": "<withheld>"}
    live = LiveProcess(seen["argv"], seen["env"])
    assert compare(ExpectedProcess(argv, env, frozenset({"DB_PASSWORD"})), live) == {}
    drifted = compare(ExpectedProcess(argv, {**env, "APP_MODE": "green"}, frozenset({"DB_PASSWORD"})), live)
    assert drifted == {"env_changed": {"APP_MODE": {"expected": "green", "actual": "blue"}}}
    assert (await client.inspect(started.pid, started.start_time + 1, []))["state"] == "recycled"
    await client.stop(started.pid, started.start_time, timeout=2)
    assert (await client.inspect(started.pid, started.start_time, []))["state"] == "gone"


async def test_instances_hold_none_of_the_channel_so_it_can_close(root: Path) -> None:
    """sshd ends a session only when every copy of its pipes is closed: an instance or supervisor
    that kept the helper's stdout or stderr would hold the SSH channel open forever."""
    pyz = bundle.write(root / "helper")
    client, proc = await spawn_local([PYTHON, "-I", str(pyz), "--root", str(root / "state")],
                                     start_new_session=True, stderr=asyncio.subprocess.PIPE)
    started = await client.start("web-1", [PYTHON, "-c", "import time; time.sleep(120)"], {}, str(root))
    await client.aclose()                     # the channel's stdin ends
    assert proc.stdout is not None and proc.stderr is not None
    assert await asyncio.wait_for(proc.stdout.read(), 5) == b""
    assert await asyncio.wait_for(proc.stderr.read(), 5) == b""
    assert await asyncio.wait_for(proc.wait(), 5) == 0
    assert alive(started.pid, started.start_time)


async def test_a_host_s_instances_are_stopped_together_in_one_grace_period(spawn: Any, root: Path) -> None:
    client, _ = await spawn()
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                "time.sleep(120)")
    polite = "import time; print('ready', flush=True); time.sleep(120)"
    started = [await client.start(f"w{i}", [PYTHON, "-c", stubborn if i < 3 else polite], {}, str(root))
               for i in range(4)]
    deadline = time.monotonic() + 10
    for i in range(4):
        while b"ready" not in (await client.logs(f"w{i}", tail=100)).data:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    t0 = time.monotonic()
    states = await client.stop_many([(s.pid, s.start_time) for s in started] + [(started[0].pid, 1)], timeout=1.0)
    took = time.monotonic() - t0
    assert took < 2.9, f"{took:.2f}s: the grace periods ran one after another (3 x 1 s)"
    assert [s.how for s in states] == ["SIGKILL after 1s grace"] * 3 + ["SIGTERM", "not running"]
    assert [s.exit_code for s in states[:4]] == [-signal.SIGKILL] * 3 + [-signal.SIGTERM]
    assert not any(s.stuck for s in states) and not any(alive(s.pid, s.start_time) for s in started)


async def test_free_port_is_bindable_and_never_one_the_controller_asks_to_avoid(spawn: Any) -> None:
    client, _ = await spawn()
    first = await client.free_port("127.0.0.1", [])
    with socket.socket() as s:
        s.bind(("127.0.0.1", first))   # free indeed
    avoid = [first]
    for _ in range(20):
        port = await client.free_port("127.0.0.1", avoid)
        assert port not in avoid
        avoid.append(port)
    with pytest.raises(HelperError, match="cannot bind a TCP port on 192.0.2.1"):
        await client.free_port("192.0.2.1", [])   # TEST-NET: no address of this machine
