"""The helper as one zipapp, built deterministically and named by its sha256.

The bundle holds the helper's modules and, verbatim, the stdlib-only shipyard modules it
reuses (the object store, trees, manifest, drift content scan, /proc readers), so a host's
store is written and checked by the same code as a local one. Packages whose real
``__init__`` imports more (pydantic, ...) get an empty stub. Entries are sorted, stored
uncompressed (zlib versions differ between machines) with fixed times and modes: the same
sources give the same bytes, hence the same name, on every controller.

On a host it lives at ``~/.shipyard/helper/<sha>.pyz`` and, unpacked with bytecode compiled
by the host's python3, at ``~/.shipyard/helper/<sha>/`` (a zipapp's modules are compiled
again on every start: ~40 ms of each helper and supervisor start). ``install_argv`` puts
both there from stdin (verified by hash, temp names + rename) and ``launch_argv`` runs the
unpacked copy.
"""

from __future__ import annotations

import functools
import hashlib
import io
import zipfile
from pathlib import Path, PurePosixPath

import shipyard

VERBATIM = (
    "__init__.py",
    "errors.py",
    "fsutil.py",
    "procfs.py",
    "images/manifest.py",
    "images/objects.py",
    "images/trees.py",
    "images/build.py",
    "images/ignore.py",
    "drift/baseline.py",
    "drift/content.py",
    "drift/hashing.py",
    "drift/listeners.py",
    "drift/report.py",
    "fleet/remote/__init__.py",
    "fleet/remote/drift_probe.py",
    "fleet/remote/helper.py",
    "fleet/remote/host.py",
    "fleet/remote/instances.py",
    "fleet/remote/protocol.py",
    "fleet/remote/store.py",
    "fleet/remote/supervisor.py",
)
STUBS = ("images/__init__.py", "drift/__init__.py", "fleet/__init__.py")
_STUB = b'"""Only the modules the remote helper needs are bundled."""\n'

MIN_PYTHON = (3, 11)
"""What the reused modules need; Debian 12's python3 is 3.11."""
MAIN = b'''import sys

if sys.version_info < (%d, %d):
    sys.stdout.write('{"id": null, "ok": false, "error": {"code": "python", "message": "the shipyard helper '
                     'needs Python %d.%d or later, this host has %%d.%%d", "hint": "install python3 >= %d.%d on '
                     'the host"}}\\n' %% sys.version_info[:2])
    sys.exit(3)

if sys.argv[1:2] == ["supervise"]:   # one per instance start: import only what it needs
    from shipyard.fleet.remote.supervisor import supervise

    supervise()
    sys.exit(0)

from shipyard.fleet.remote.helper import main

sys.exit(main())
''' % (MIN_PYTHON * 3)

HELPER_DIR = ".shipyard/helper"
"""Relative to the home directory, where an SSH command starts."""
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)

INSTALL_SCRIPT = """\
import compileall, hashlib, os, py_compile, shutil, sys, tempfile, zipfile
sha = sys.argv[1]
data = sys.stdin.buffer.read()
if hashlib.sha256(data).hexdigest() != sha:
    sys.exit("shipyard: the helper bundle arrived corrupted (sha256 mismatch); nothing was installed")
d = os.path.expanduser("~/" + sys.argv[2])
os.makedirs(d, exist_ok=True)
pyz, unpacked = os.path.join(d, sha + ".pyz"), os.path.join(d, sha)
fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
try:
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o444)
    os.replace(tmp, pyz)
except BaseException:
    os.unlink(tmp)
    raise
tmp = tempfile.mkdtemp(prefix=".tmp-", dir=d)
try:
    with zipfile.ZipFile(pyz) as zf:
        zf.extractall(tmp)
    if not compileall.compile_dir(tmp, quiet=2, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH):
        sys.exit("shipyard: the helper bundle does not compile under this python3; nothing was installed")
    for top, dirs, files in os.walk(tmp, topdown=False):
        for name in files:
            os.chmod(os.path.join(top, name), 0o444)
        os.chmod(top, 0o555)
    try:
        os.rename(tmp, unpacked)
    except OSError:
        if not os.path.isfile(os.path.join(unpacked, "__main__.py")):
            raise
finally:
    if os.path.isdir(tmp):
        for top, dirs, files in os.walk(tmp):
            os.chmod(top, 0o755)
        shutil.rmtree(tmp)
print(pyz)
"""


def _entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3
    info.external_attr = 0o100644 << 16
    return info


def _members() -> dict[str, bytes]:
    src = Path(shipyard.__file__).parent
    members = {f"shipyard/{rel}": (src / rel).read_bytes() for rel in VERBATIM}
    members.update({f"shipyard/{rel}": _STUB for rel in STUBS})
    members["__main__.py"] = MAIN
    return members


@functools.lru_cache(maxsize=1)
def build() -> tuple[str, bytes]:
    """(sha256, zipapp bytes) of the helper made from this checkout's sources."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in sorted(_members().items()):
            zf.writestr(_entry(name), data)
    data = out.getvalue()
    return hashlib.sha256(data).hexdigest(), data


def write(directory: Path) -> Path:
    """The bundle written as ``<directory>/<sha>.pyz`` (for local use and tests)."""
    sha, data = build()
    path = Path(directory) / f"{sha}.pyz"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".tmp-{path.name}")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def remote_path(sha: str) -> str:
    """The verified zipapp as it arrived (what ``hello`` hashes)."""
    return str(PurePosixPath(HELPER_DIR) / f"{sha}.pyz")


def unpacked_path(sha: str) -> str:
    """The same modules unpacked with bytecode compiled on the host: made last, so its
    presence means the install is complete; what runs, so no start recompiles the sources."""
    return str(PurePosixPath(HELPER_DIR) / sha)


def install_argv(sha: str, python: str = "python3") -> list[str]:
    """Reads the bundle on stdin, installs it verified by hash (the zipapp, then the unpacked
    and compiled copy, each under a temp name then renamed); prints the zipapp's path."""
    return [python, "-I", "-c", INSTALL_SCRIPT, sha, HELPER_DIR]


def check_argv(sha: str) -> list[str]:
    """Succeeds (exit 0) when the bundle is already installed."""
    return ["test", "-f", f"{unpacked_path(sha)}/__main__.py"]


def launch_argv(sha: str, root: str | None = None, python: str = "python3") -> list[str]:
    """Serves the protocol on stdin/stdout; state under ``root`` (default ~/.shipyard)."""
    return [python, "-I", unpacked_path(sha), *(["--root", root] if root else [])]
