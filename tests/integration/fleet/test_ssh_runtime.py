"""SshRuntime where only SSH can fail: an instance outlives its SSH connection and is
re-adopted by the same runtime and by a new controller; a host that stops answering keeps
its instances' last seen state (the engine decides when it is lost) and refuses a stop with
a clear RuntimeFailure instead of hanging; a tree tampered with on the host is replaced before
the next start; ports are never handed out twice in a row. The port's other promises:
test_runtime_port.py."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shipyard.errors import RuntimeFailure
from shipyard.fleet.remote.client import HelperClient
from shipyard.rollout.records import Instance
from shipyard.runtime.health import wait_healthy
from support.netns_hosts import NetnsFleet
from support.runtime_sides import SshSide

pytestmark = pytest.mark.timeout(60)

SHOP_APP = Path(__file__).resolve().parents[3] / "examples" / "shop" / "app"


@pytest.fixture
async def side(fleet1: NetnsFleet, tmp: Path) -> AsyncIterator[SshSide]:
    s = SshSide(tmp, fleet1)
    try:
        yield await s.open()
    finally:
        fleet1.restore_network(fleet1.hosts[0])
        await s.close()


async def start_shop(side: SshSide, tmp: Path) -> Instance:
    tree = tmp / "tree"
    shutil.copytree(SHOP_APP, tree, ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "release.toml").write_text('version = "3"\ngreeting = "hi"\n')
    inst = await side.start(await side.launch(tree, ["python3", "-m", "shop", "--host", side.address,
                                                     "--port", "${PORT}"]))
    ok, why = await wait_healthy(inst, path="/healthz", interval=0.05, timeout=1, healthy_threshold=1,
                                 deadline_s=10, is_alive=side.runtime.is_alive)
    assert ok, why
    return inst


async def serves(inst: Instance) -> bool:
    try:
        reader, writer = await asyncio.open_connection(inst.host, inst.port)
    except OSError:
        return False
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return raw.startswith(b"HTTP/1.1 200")


async def until(check: object, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():   # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_an_instance_survives_its_connection_dropping_and_is_readopted(side: SshSide, tmp: Path) -> None:
    rt = side.runtime
    inst = await start_shop(side, tmp)
    conn = side.pools[0].host(side.runtime._hosts[side.address].conn.target)
    connects = conn.connects
    assert side.fleet.drop_connections(side.host)
    assert await serves(inst), "the instance died with its SSH connection"
    assert rt.is_alive(inst)   # while reconnecting: the last seen state, not "dead"
    await until(lambda: conn.connects > connects and conn.state == "connected")
    polls = rt._hosts[side.address].watch.polls
    await rt.refresh()
    assert rt._hosts[side.address].watch.polls == polls + 1   # a fresh answer over the new connection
    assert rt.is_alive(inst) and rt.unreachable_since(side.address) is None

    restarted = await side.second_runtime()   # a controller restart: new pool, new helpers
    revived = Instance.from_dict(json.loads(json.dumps(inst.to_dict())))
    await restarted.refresh([revived])
    assert restarted.is_alive(revived) and await serves(inst)
    await restarted.stop(revived, timeout=5)
    assert not restarted.is_alive(revived) and restarted.exit_code(revived) == 0
    assert not await serves(inst)
    await rt.refresh()
    assert not rt.is_alive(inst) and rt.exit_code(inst) == 0


async def test_stop_on_an_unreachable_host_is_a_clear_error_and_works_once_it_is_back(
        side: SshSide, tmp: Path) -> None:
    rt = await side.second_runtime(connect_wait=1.0)
    side.runtime = rt
    inst = await start_shop(side, tmp)
    side.fleet.cut_network(side.host)
    began = time.monotonic()
    with pytest.raises(RuntimeFailure) as err:
        await rt.stop(inst, timeout=1)
    assert time.monotonic() - began < 8
    assert f"cannot stop {inst.id}" in err.value.message and side.host.name in err.value.message
    assert err.value.hint
    await rt.refresh()
    assert rt.unreachable_since(side.address) is not None
    assert rt.is_alive(inst), "a silent host's instances keep their last seen state"

    side.fleet.restore_network(side.host)
    await until(lambda: rt._hosts[side.address].conn.state == "connected", 15)
    await rt.stop(inst, timeout=5)
    assert not rt.is_alive(inst) and await side.pid_gone(inst.pid)
    assert rt.unreachable_since(side.address) is None


async def test_back_to_back_starts_never_get_the_same_port_on_a_host(
        side: SshSide, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[list[int]] = []
    real = HelperClient.free_port

    async def spy(self: HelperClient, address: str, avoid: list[int]) -> int:
        asked.append(list(avoid))
        return await real(self, address, avoid)

    monkeypatch.setattr(HelperClient, "free_port", spy)
    tree = tmp / "tree"
    tree.mkdir()
    (tree / "sleep.py").write_text("import time; time.sleep(60)\n")
    first = await side.start(await side.launch(tree, ["python3", "sleep.py"], name="a-1"))
    second = await side.start(await side.launch(tree, ["python3", "sleep.py"], name="a-2"))
    assert first.port != second.port
    assert asked == [[], [first.port]]   # the host is told which ports it handed out just now
    await asyncio.gather(side.runtime.stop(first, 1), side.runtime.stop(second, 1))
    assert not side.runtime.is_alive(first) and not side.runtime.is_alive(second)


async def test_a_tampered_tree_on_the_host_is_replaced_before_an_instance_starts_from_it(
        side: SshSide, tmp: Path) -> None:
    tree = tmp / "tree"
    tree.mkdir()
    (tree / "app.py").write_text("import time; print(open('version.txt').read(), flush=True); time.sleep(60)\n")
    (tree / "version.txt").write_text("v1")
    first = await side.start(await side.launch(tree, ["python3", "app.py"], name="t-1"))
    [host_tree] = side.local_path("/root/.shipyard/images/trees/").glob("*")
    version = host_tree / "version.txt"
    version.chmod(0o644)
    version.write_text("v1-edited-on-the-host")   # someone "fixed" Prod-Server-05 by hand
    second = await side.start(await side.launch(tree, ["python3", "app.py"], name="t-2"))
    await until(lambda: (side.local_path(second.log_path).read_text().count("v1") > 0), 10)
    log = side.local_path(second.log_path).read_text()
    assert "v1\n" in log and "edited" not in log
    fresh = host_tree / "version.txt"
    assert fresh.read_text() == "v1" and not fresh.stat().st_mode & 0o222   # made afresh, read-only
    quarantined = [p for p in side.local_path("/root/.shipyard/images/").rglob("version.txt")
                   if "edited" in p.read_text()]
    assert quarantined, "the tampered tree is kept aside as evidence"
    await asyncio.gather(side.runtime.stop(first, 1), side.runtime.stop(second, 1))
