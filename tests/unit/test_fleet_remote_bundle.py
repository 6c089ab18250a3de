"""The helper bundle: the same sources give the same bytes (hence the same name), and what it
holds imports nothing but the standard library and itself, so a host needs only python3."""

from __future__ import annotations

import ast
import hashlib
import io
import sys
import zipfile
from pathlib import Path

from shipyard.fleet.remote import bundle


def test_the_bundle_is_deterministic_and_named_by_its_hash() -> None:
    sha, data = bundle.build()
    bundle.build.cache_clear()
    again_sha, again = bundle.build()
    assert (sha, data) == (again_sha, again) and hashlib.sha256(data).hexdigest() == sha
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    assert names == sorted(names) and "__main__.py" in names
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
    assert bundle.remote_path(sha) == f".shipyard/helper/{sha}.pyz"
    assert bundle.unpacked_path(sha) == f".shipyard/helper/{sha}"
    assert bundle.launch_argv(sha, "/srv/sy") == ["python3", "-I", f".shipyard/helper/{sha}", "--root", "/srv/sy"]


def _bundled() -> dict[str, str]:
    _, data = bundle.build()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {n: zf.read(n).decode() for n in zf.namelist()}


def _module(name: str) -> str:
    parts = name.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_bundled_code_imports_only_the_standard_library_and_the_bundle() -> None:
    files = _bundled()
    modules = {_module(n) for n in files}
    bad = []
    for name, text in files.items():
        mod = _module(name)
        package = mod if name.endswith("__init__.py") else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(text)):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                top = t.split(".")[0]
                if top == "__future__" or (top != "shipyard" and top in sys.stdlib_module_names):
                    continue
                if t not in modules:
                    bad.append(f"{name}: {t}")
    assert bad == []


def test_every_helper_side_module_of_the_package_is_bundled() -> None:
    here = Path(bundle.__file__).parent
    controller_only = {"bundle.py", "client.py", "transfer.py"}
    helper_side = {f"fleet/remote/{p.name}" for p in here.glob("*.py") if p.name not in controller_only}
    assert helper_side <= set(bundle.VERBATIM)
    assert not {f"fleet/remote/{n}" for n in controller_only} & set(_bundled())
