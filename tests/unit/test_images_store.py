"""The image store: identity, dedup, lookup, materialise and verify, on a real temp directory."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from shipyard.errors import ImageError, ImageVerificationError, NotFoundError
from shipyard.images import BuildInput, ImageStore


@pytest.fixture
def store(tmp: Path) -> ImageStore:
    return ImageStore(tmp / "images")


@pytest.fixture
def ctx(tmp: Path) -> Path:
    src = tmp / "src"
    (src / "app").mkdir(parents=True)
    (src / "app" / "main.py").write_text("print('v1')\n")
    (src / "app" / "data.bin").write_bytes(bytes(range(256)) * 10)
    (src / "run.sh").write_text("#!/bin/sh\nexec python -m app\n")
    os.chmod(src / "run.sh", 0o700)
    (src / "empty").mkdir()
    os.symlink("app/main.py", src / "entry.py")
    return src


def inp(ctx: Path, **kw: object) -> BuildInput:
    base = BuildInput(
        service="shop",
        context=ctx,
        ignore=[],
        steps=[],
        env={"PYTHONPATH": "deps"},
        files={"config/app.toml": 'greeting = "hello"\n'},
        run_command=["python", "-m", "app"],
        run_env={"LOG_LEVEL": "info"},
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def paths(store: ImageStore, image_id: str) -> list[str]:
    return [e["path"] for e in store.get(image_id).manifest["files"]]


async def test_build_records_everything_and_nothing_else(store: ImageStore, ctx: Path, tmp: Path) -> None:
    image = await store.build(inp(ctx))
    assert len(image.id) == 64 and all(c in "0123456789abcdef" for c in image.id)
    assert image.service == "shop"
    assert image.command == ["python", "-m", "app"]
    assert image.env == {"PYTHONPATH": "deps", "LOG_LEVEL": "info"}
    assert image.files == 4  # main.py, data.bin, run.sh, config/app.toml
    assert image.size == len("print('v1')\n") + 2560 + len("#!/bin/sh\nexec python -m app\n") + 19
    by_path = {e["path"]: e for e in image.manifest["files"]}
    assert set(by_path) == {
        "app",
        "app/data.bin",
        "app/main.py",
        "config",
        "config/app.toml",
        "empty",
        "entry.py",
        "run.sh",
    }
    assert by_path["run.sh"]["mode"] == "0755"
    assert by_path["app/main.py"]["mode"] == "0644"
    assert by_path["entry.py"] == {"path": "entry.py", "type": "symlink", "target": "app/main.py"}
    assert by_path["empty"] == {"path": "empty", "type": "dir"}
    assert os.listdir(store.root / "staging") == []
    assert not (ctx / "config").exists()  # the source directory is never written to


async def test_run_env_wins_over_build_env(store: ImageStore, ctx: Path) -> None:
    image = await store.build(inp(ctx, env={"X": "build", "Y": "1"}, run_env={"X": "run"}))
    assert image.env == {"X": "run", "Y": "1"}


async def test_same_inputs_same_id_even_from_a_copy_elsewhere(
    store: ImageStore, ctx: Path, tmp: Path
) -> None:
    first = await store.build(inp(ctx))
    again = await store.build(inp(ctx))
    assert again.id == first.id
    assert again.created_at == first.created_at  # reused, not rebuilt
    copy = tmp / "elsewhere" / "deeper" / "src"
    shutil.copytree(ctx, copy, symlinks=True)
    os.utime(copy / "app" / "main.py", (1, 1))  # mtimes are not part of the identity
    os.chmod(copy / "app" / "main.py", 0o600)  # nor are non-exec permission bits
    assert (await store.build(inp(copy))).id == first.id
    assert len(store.list()) == 1


async def test_any_meaningful_change_gives_a_new_id(store: ImageStore, ctx: Path) -> None:
    base = (await store.build(inp(ctx))).id
    ids = {base}
    data = bytearray((ctx / "app" / "data.bin").read_bytes())
    data[100] ^= 1
    (ctx / "app" / "data.bin").write_bytes(bytes(data))
    one_byte = (await store.build(inp(ctx))).id
    ids.add(one_byte)
    ids.add((await store.build(inp(ctx, files={"config/app.toml": 'greeting = "hi"\n'}))).id)
    ids.add((await store.build(inp(ctx, env={"PYTHONPATH": "lib"}))).id)
    ids.add((await store.build(inp(ctx, run_env={"LOG_LEVEL": "debug"}))).id)
    ids.add((await store.build(inp(ctx, run_command=["python", "-m", "app", "-v"]))).id)
    os.chmod(ctx / "app" / "main.py", 0o755)
    ids.add((await store.build(inp(ctx))).id)
    assert len(ids) == 7
    assert [im.id for im in store.list()][-1] == base


async def test_objects_are_deduplicated_and_read_only(store: ImageStore, ctx: Path) -> None:
    await store.build(inp(ctx))
    objects = sorted(p for p in (store.root / "objects").rglob("*") if p.is_file())
    assert len(objects) == 4
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o444 for p in objects)
    (ctx / "app" / "copy.bin").write_bytes((ctx / "app" / "data.bin").read_bytes())
    await store.build(inp(ctx, env={"NEW": "1"}))
    assert sorted(p for p in (store.root / "objects").rglob("*") if p.is_file()) == objects


async def test_ignore_patterns_and_shipyardignore(store: ImageStore, ctx: Path) -> None:
    (ctx / "app" / "__pycache__").mkdir()
    (ctx / "app" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\0")
    (ctx / "notes.log").write_text("x")
    (ctx / "keep.log").write_text("x")
    (ctx / "secrets").mkdir()
    (ctx / "secrets" / "key").write_text("s3cr3t")
    (ctx / ".shipyardignore").write_text("# local only\nsecrets/\n!keep.log\n")
    image = await store.build(inp(ctx, ignore=["__pycache__", "*.log"]))
    got = paths(store, image.id)
    assert "keep.log" in got and ".shipyardignore" in got
    assert not [p for p in got if "pycache" in p or p == "notes.log" or p.startswith("secrets")]


async def test_steps_run_in_staging_with_build_env_and_output_lands_in_image(
    store: ImageStore, ctx: Path
) -> None:
    code = (
        "import os, pathlib; pathlib.Path('gen').mkdir();"
        "pathlib.Path('gen/out.txt').write_text(os.environ['FLAVOUR'] + open('config/app.toml').read());"
        "print('step says hi')"
    )
    lines: list[str] = []
    image = await store.build(
        inp(ctx, steps=[[sys.executable, "-c", code]], env={"FLAVOUR": "mint:"}), log=lines.append
    )
    assert "step says hi" in lines
    tree = store.verified_tree(image.id)
    assert (tree / "gen" / "out.txt").read_text() == 'mint:greeting = "hello"\n'
    assert image.env["FLAVOUR"] == "mint:"


async def test_failing_step_raises_with_output_and_leaves_nothing(store: ImageStore, ctx: Path) -> None:
    code = "import sys\nfor i in range(30): print('line', i)\nsys.exit(3)"
    with pytest.raises(ImageError) as err:
        await store.build(
            inp(ctx, steps=[[sys.executable, "-c", "print('ok')"], [sys.executable, "-c", code]])
        )
    msg = str(err.value)
    assert "build step 2/2 failed with exit code 3" in msg
    assert "line 29" in msg and "line 10" in msg and "line 9\n" not in msg  # the last 20 lines only
    assert store.list() == []
    assert os.listdir(store.root / "staging") == []
    assert os.listdir(store.root / "manifests") == []


async def test_missing_executable_is_a_clear_error(store: ImageStore, ctx: Path) -> None:
    with pytest.raises(ImageError, match="executable 'no-such-tool-xyz' not found"):
        await store.build(inp(ctx, steps=[["no-such-tool-xyz", "--flag"]]))
    assert os.listdir(store.root / "staging") == []


async def test_symlink_out_of_context_is_refused(store: ImageStore, ctx: Path, tmp: Path) -> None:
    (tmp / "outside.txt").write_text("not yours")
    os.symlink(tmp / "outside.txt", ctx / "leak")
    with pytest.raises(ImageError, match="leak -> .* points outside the build context"):
        await store.build(inp(ctx))
    (ctx / "leak").unlink()
    os.symlink("../outside.txt", ctx / "leak")
    with pytest.raises(ImageError, match="points outside"):
        await store.build(inp(ctx))
    assert os.listdir(store.root / "staging") == []


async def test_symlink_escaping_through_another_link_is_refused(store: ImageStore, ctx: Path) -> None:
    os.symlink(".", ctx / "here")
    os.symlink("here/..", ctx / "up")  # lexically inside, really the parent of the tree
    with pytest.raises(ImageError, match="up -> here/.. points outside the image"):
        await store.build(inp(ctx))


async def test_rendered_file_never_writes_through_a_symlink(store: ImageStore, ctx: Path, tmp: Path) -> None:
    os.symlink("app", ctx / "config")
    with pytest.raises(ImageError, match="config is a symlink"):
        await store.build(inp(ctx))
    with pytest.raises(ImageError, match="not a plain relative path"):
        await store.build(inp(ctx, files={"../x": "y"}))


async def test_missing_context_is_a_clear_error(store: ImageStore, tmp: Path) -> None:
    with pytest.raises(ImageError, match="is not a directory"):
        await store.build(inp(tmp / "nope"))


async def test_store_inside_the_context_is_not_copied_into_itself(ctx: Path) -> None:
    store = ImageStore(ctx / ".shipyard" / "images")
    first = await store.build(inp(ctx))
    assert not [p for p in paths(store, first.id) if p.startswith(".shipyard/images")]
    assert (await store.build(inp(ctx))).id == first.id


async def test_get_by_prefix_and_errors(store: ImageStore, ctx: Path) -> None:
    a = await store.build(inp(ctx))
    assert store.get(a.id).id == a.id
    assert store.get(a.id[:6]).id == a.id
    assert store.get(a.id[:12].upper()).id == a.id
    with pytest.raises(ImageError, match="too short"):
        store.get(a.id[:5])
    with pytest.raises(ImageError, match="not an image id"):
        store.get("xyz123")
    missing = "0123456789abcdef" * 4
    with pytest.raises(NotFoundError):
        store.get(missing if not a.id.startswith("012345") else missing[::-1])
    # an ambiguous prefix: fabricate a second manifest name sharing a's first 8 characters
    twin = a.id[:8] + ("0" if a.id[8] != "0" else "1") + a.id[9:]
    shutil.copy(store.root / "manifests" / f"{a.id}.json", store.root / "manifests" / f"{twin}.json")
    with pytest.raises(ImageError, match="ambiguous"):
        store.get(a.id[:8])
    with pytest.raises(ImageVerificationError, match="does not match its id"):
        store.get(twin)  # its bytes do not hash to its name: caught on load


async def test_list_newest_first_and_by_service(store: ImageStore, ctx: Path) -> None:
    ids = [(await store.build(inp(ctx, env={"N": str(i)}))).id for i in range(3)]
    other = await store.build(inp(ctx, service="other"))
    assert [im.id for im in store.list("shop")] == ids[::-1]
    assert [im.id for im in store.list("other")] == [other.id]
    assert [im.id for im in store.list()] == [other.id, *ids[::-1]]
    created = [im.created_at for im in store.list()]
    assert created == sorted(created, reverse=True)
    assert store.list("nobody") == []
