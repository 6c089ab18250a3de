"""The remote helper's image store on a host: objects sent once and verified by hash, trees
materialised read-only and verified (tamper reported), full disks, installing the bundle."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import resource
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shipyard.fleet.remote import bundle
from shipyard.fleet.remote.client import HelperClient, HelperError, HelperGone
from shipyard.fleet.remote.transfer import ship_image
from shipyard.images.build import BuildInput
from shipyard.images.manifest import diff_tree
from shipyard.images.objects import ObjectStore
from shipyard.images.store import ImageStore
from support import remote_helper
from support.procs import kill_everything_under
from support.remote_helper import PYTHON, leftovers, make_image, ship

root = remote_helper.root      # fixtures
spawn = remote_helper.spawn


async def test_hello_reports_versions_and_host_facts(spawn: Any, root: Path) -> None:
    client, _ = await spawn()
    hello = await client.hello()
    sha, _ = bundle.build()
    assert hello["protocol"] == 1 and hello["bundle_sha256"] == sha
    assert hello["python"].startswith("3.")
    facts = hello["host"]
    assert facts["cpu_count"] == os.cpu_count() and len(facts["load"]) == 3
    assert 0 < facts["disk"]["free"] <= facts["disk"]["total"]
    assert facts["memory"]["total"] > 0 and facts["boot_id"]


async def test_objects_travel_once_and_a_corrupted_put_is_refused(spawn: Any, root: Path) -> None:
    client, _ = await spawn()
    good, bad = b"x" * 3_000_000, b"the real content\n"
    good_sha, bad_sha = hashlib.sha256(good).hexdigest(), hashlib.sha256(bad).hexdigest()
    assert await client.missing([good_sha, bad_sha, good_sha]) == [good_sha, bad_sha]
    assert await client.put(good_sha, good) is True
    assert await client.put(good_sha, good) is False          # already there: nothing rewritten
    with pytest.raises(HelperError) as err:
        await client.put(bad_sha, b"tampered on the way\n")
    assert err.value.code == "hash_mismatch" and bad_sha[:12] in err.value.message
    objects = root / "state" / "images" / "objects"
    assert await client.missing([good_sha, bad_sha]) == [bad_sha]
    assert leftovers(objects) == []
    stored = objects / good_sha[:2] / good_sha[2:]
    assert stored.read_bytes() == good and stat.S_IMODE(stored.stat().st_mode) == 0o444
    assert (await client.hello())["protocol"] == 1               # still in step after the refusal


async def test_tree_materialised_read_only_verified_and_tamper_reported(spawn: Any, root: Path) -> None:
    store = ObjectStore(root / "local" / "objects")
    image_id, data, manifest = make_image(root, {"app/main.py": b"print('v1')\n", "static/a.css": b"a{}\n"}, store)
    client, _ = await spawn()
    with pytest.raises(HelperError) as err:
        await client.materialize(image_id, data)
    assert err.value.code == "missing_objects" and len(err.value.details["objects"]) == 3
    assert await ship(client, store, manifest) == 3
    with pytest.raises(HelperError) as err:
        await client.materialize("0" * 64, data)                 # a manifest must hash to its id
    assert err.value.code == "bad_request"
    result = await client.materialize(image_id, data)
    tree = Path(result["tree"])
    assert result["created"] and tree == root / "state" / "images" / "trees" / image_id
    assert diff_tree(tree, manifest, image_id).ok              # the same tree a local store writes
    assert stat.S_IMODE((tree / "app" / "main.py").stat().st_mode) == 0o444
    assert stat.S_IMODE((tree / "run.sh").stat().st_mode) == 0o555
    assert (await client.materialize(image_id, data))["created"] is False
    for mode in ("metadata", "full"):
        assert (await client.verify(image_id, mode)).clean

    target = tree / "app" / "main.py"
    os.chmod(tree / "app", 0o755)
    os.chmod(target, 0o644)
    target.write_bytes(b"print('v2')\n")                        # same size, other content
    for mode in ("metadata", "full"):
        res = await client.verify(image_id, mode)
        assert not res.clean
        assert set(res.content) == {"app/main.py"}
        assert res.content["app/main.py"]["actual_sha256"] != res.content["app/main.py"]["expected_sha256"]
        assert set(res.modes) == {"app", "app/main.py"}
    moved = await client.quarantine(image_id)
    assert moved is not None and not tree.exists() and Path(moved).is_dir()
    assert (await client.verify(image_id)).tree_missing
    assert (await client.materialize(image_id, data))["created"] is True
    assert (await client.verify(image_id, "full")).clean
    await client.remove_tree(image_id)
    assert not tree.exists()


async def test_a_corrupted_object_in_the_host_store_is_dropped_and_asked_for_again(spawn: Any, root: Path) -> None:
    store = ObjectStore(root / "local" / "objects")
    image_id, data, manifest = make_image(root, {"a.txt": b"alpha\n"}, store)
    client, _ = await spawn()
    await ship(client, store, manifest)
    sha = next(e["sha256"] for e in manifest["files"] if e["path"] == "a.txt")
    obj = root / "state" / "images" / "objects" / sha[:2] / sha[2:]
    obj.chmod(0o644)
    obj.write_bytes(b"omega\n")
    with pytest.raises(HelperError) as err:
        await client.materialize(image_id, data)
    assert err.value.code == "corrupted" and err.value.details["objects"] == [sha]
    assert not (root / "state" / "images" / "trees" / image_id).exists()
    assert await client.missing([sha]) == [sha]


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


async def test_a_full_disk_fails_clearly_and_leaves_nothing_half_written(spawn: Any, root: Path) -> None:
    store = ObjectStore(root / "local" / "objects")
    big = os.urandom(300 * 1024)
    image_id, data, manifest = make_image(root, {"big.bin": big}, store)
    sha = hashlib.sha256(big).hexdigest()

    client, _ = await spawn(_limit_file_size)        # any file past 64 KiB fails: EFBIG
    with pytest.raises(HelperError) as err:
        await client.put(sha, big)
    assert err.value.disk_full and "disk is full" in err.value.message and err.value.hint
    objects = root / "state" / "images" / "objects"
    assert await client.missing([sha]) == [sha] and leftovers(objects) == []
    assert (await client.hello())["protocol"] == 1

    roomy, _ = await spawn()
    await ship(roomy, store, manifest)
    with pytest.raises(HelperError) as err:          # the tree cannot be written either
        await client.materialize(image_id, data)
    assert err.value.disk_full
    trees = root / "state" / "images" / "trees"
    assert not trees.exists() or list(trees.iterdir()) == []
    assert (await roomy.materialize(image_id, data))["created"]


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[None]:
    path.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        kill_everything_under(path)
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
async def test_a_really_full_file_system_fails_the_host_and_keeps_nothing_half_written(spawn: Any,
                                                                                       root: Path) -> None:
    store = ObjectStore(root / "local" / "objects")
    small = os.urandom(600 * 1024)
    image_id, data, manifest = make_image(root, {"small.bin": small}, store)
    too_big = os.urandom(2 << 20)
    state = root / "state"
    with tmpfs(state, "1m"):
        client, _ = await spawn()
        free_before = os.statvfs(state).f_bfree
        with pytest.raises(HelperError) as err:
            await client.put(hashlib.sha256(too_big).hexdigest(), too_big)
        assert err.value.disk_full and "No space left" in err.value.message
        assert leftovers(state) == [] and os.statvfs(state).f_bfree >= free_before - 2   # dirs only

        await ship(client, store, manifest)                 # 600 KiB fits; a tree of it does not
        free_before = os.statvfs(state).f_bfree
        with pytest.raises(HelperError) as err:
            await client.materialize(image_id, data)
        assert err.value.disk_full
        assert list((state / "images" / "trees").iterdir()) == []
        assert os.statvfs(state).f_bfree >= free_before - 2
        assert (await client.verify(image_id)).tree_missing
        await client.aclose()


async def test_a_helper_that_dies_fails_pending_calls(spawn: Any, root: Path) -> None:
    client, helper = await spawn()
    await client.hello()
    helper.kill()
    await helper.wait()
    with pytest.raises(HelperGone):
        await client.hello()
    with pytest.raises(HelperGone):
        await client.hello()


async def test_install_script_puts_the_bundle_under_home_verified(root: Path) -> None:
    sha, data = bundle.build()
    home = root / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}

    async def installed_already() -> bool:
        check = await asyncio.create_subprocess_exec(*bundle.check_argv(sha), env=env, cwd=home)
        return await check.wait() == 0

    assert not await installed_already()
    corrupted = data[:100] + bytes([data[100] ^ 1]) + data[101:]
    for payload, ok in ((corrupted, False), (data, True)):
        proc = await asyncio.create_subprocess_exec(*bundle.install_argv(sha, PYTHON), env=env, cwd=home,
                                                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        out, errout = await proc.communicate(payload)
        assert (proc.returncode == 0) is ok, errout
    installed = home / bundle.remote_path(sha)
    assert await installed_already()
    assert installed.read_bytes() == data and out.decode().strip() == str(installed)
    assert leftovers(home) == []
    proc = await asyncio.create_subprocess_exec(*bundle.launch_argv(sha, str(root / "st"), PYTHON), env=env,
                                                cwd=home, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE)
    client = HelperClient(proc.stdout, proc.stdin)   # type: ignore[arg-type]
    assert (await client.hello())["bundle_sha256"] == sha
    await client.aclose()
    assert await proc.wait() == 0


async def test_two_installs_at_once_both_succeed_and_leave_one_compiled_read_only_copy(root: Path) -> None:
    sha, data = bundle.build()
    home = root / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}

    async def install() -> int:
        proc = await asyncio.create_subprocess_exec(*bundle.install_argv(sha, PYTHON), env=env, cwd=home,
                                                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        await proc.communicate(data)
        return proc.returncode   # type: ignore[return-value]

    assert await asyncio.gather(install(), install(), install()) == [0, 0, 0]
    helper_dir = home / bundle.HELPER_DIR
    assert sorted(p.name for p in helper_dir.iterdir()) == [sha, f"{sha}.pyz"]
    unpacked = home / bundle.unpacked_path(sha)
    assert stat.S_IMODE(unpacked.stat().st_mode) == 0o555
    compiled = list(unpacked.rglob("*.pyc"))
    assert len(compiled) >= len(bundle.VERBATIM) and all(stat.S_IMODE(p.stat().st_mode) == 0o444 for p in compiled)
    check = await asyncio.create_subprocess_exec(*bundle.check_argv(sha), env=env, cwd=home)
    assert await check.wait() == 0


OLD_PYTHON = next((p for p in ("/root/.pyenv/versions/3.10.13/bin/python", "/usr/bin/python3.10",
                               "/usr/bin/python3.9") if os.access(p, os.X_OK)), None)


@pytest.mark.skipif(OLD_PYTHON is None, reason="no Python older than 3.11 on this machine")
async def test_a_host_python_too_old_gets_a_structured_refusal(root: Path) -> None:
    pyz = bundle.write(root / "helper")
    assert OLD_PYTHON is not None
    proc = await asyncio.create_subprocess_exec(OLD_PYTHON, "-I", str(pyz), "--root", str(root / "st"),
                                                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    client = HelperClient(proc.stdout, proc.stdin)   # type: ignore[arg-type]
    with pytest.raises(HelperGone, match="needs Python 3.11 or later") as err:
        await client.hello()
    assert err.value.hint == "install python3 >= 3.11 on the host"
    assert await proc.wait() == 3


async def test_a_release_that_changes_one_file_sends_one_file(spawn: Any, root: Path) -> None:
    images = ImageStore(root / "local")
    ctx = root / "ctx"
    ctx.mkdir()
    (ctx / "app.py").write_text("print('v1')\n")
    (ctx / "big.bin").write_bytes(os.urandom(200_000))
    (ctx / "lib.py").write_text("X = 1\n")

    async def build() -> str:
        return (await images.build(BuildInput("web", ctx, run_command=["python3", "app.py"]))).id

    v1 = await build()
    (ctx / "app.py").write_text("print('v2!')\n")
    v2 = await build()
    client, _ = await spawn()
    first = await ship_image(client, images, v1)
    assert (first.objects_total, first.objects_sent, first.created) == (3, 3, True)
    assert first.bytes_sent == 200_000 + len("print('v1')\n") + len("X = 1\n")
    second = await ship_image(client, images, v2)
    assert (second.objects_sent, second.bytes_sent) == (1, len("print('v2!')\n"))
    again = await ship_image(client, images, v2)
    assert (again.objects_sent, again.bytes_sent, again.created) == (0, 0, False)
    for image_id in (v1, v2):
        assert (await client.verify(image_id, "full")).clean

    sha = hashlib.sha256(b"X = 1\n").hexdigest()          # the host's copy rots: sent again
    obj = root / "state" / "images" / "objects" / sha[:2] / sha[2:]
    obj.chmod(0o644)
    obj.write_bytes(b"X = 2\n")
    await client.remove_tree(v1)
    healed = await ship_image(client, images, v1)
    assert (healed.objects_sent, healed.bytes_sent, healed.created) == (1, len("X = 1\n"), True)
    assert (await client.verify(v1, "full")).clean


async def test_files_managed_outside_trees_are_hashed_where_they_are(spawn: Any, root: Path) -> None:
    client, _ = await spawn()
    conf = root / "haproxy.cfg"
    conf.write_bytes(b"global\n")
    conf.chmod(0o640)
    os.symlink(conf, root / "link.cfg")
    found = await client.files([str(conf), str(root / "link.cfg"), str(root / "gone.cfg"), str(root)])
    assert found[str(conf)] == {"type": "file", "sha256": hashlib.sha256(b"global\n").hexdigest(), "size": 7,
                                "mode": "0640"}
    assert [found[str(p)]["type"] for p in (root / "link.cfg", root / "gone.cfg", root)] == [
        "symlink", "missing", "not a regular file"]
    with pytest.raises(HelperError) as err:
        await client.files(["relative.cfg"])
    assert err.value.code == "bad_request"
