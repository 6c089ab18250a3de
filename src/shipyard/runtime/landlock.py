"""Landlock through ctypes, and the small exec wrapper that confines an instance with it.

    python -I -S landlock.py --writable DIR... --writable-file FILE... -- PROGRAM ARG...

restricts itself so that nothing but the granted places can be written, created, removed,
renamed or truncated, then execs PROGRAM. Reads and execution stay unrestricted (those rights
are not handled), so a service still reads its tree, its interpreter and its libraries.

Why a wrapper rather than a subprocess preexec_fn: the daemon forks while other threads run
(asyncio.to_thread hashes and copies image trees), and Python code between fork and exec in such a
child is documented as unsafe. exec keeps the pid and its start time, so the daemon's
(pid, start time) identity names the service itself. The wrapper fails closed: if Landlock cannot be
applied, the service is not started. It imports only the standard library because it runs with
-I -S, outside the virtualenv."""

from __future__ import annotations

import ctypes
import errno
import os
import sys

# Syscall numbers: identical on every architecture since Linux 5.1 added unified numbering.
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38

ACCESS_FS_WRITE_FILE = 1 << 1
ACCESS_FS_REMOVE_DIR = 1 << 4
ACCESS_FS_REMOVE_FILE = 1 << 5
ACCESS_FS_MAKE_CHAR = 1 << 6
ACCESS_FS_MAKE_DIR = 1 << 7
ACCESS_FS_MAKE_REG = 1 << 8
ACCESS_FS_MAKE_SOCK = 1 << 9
ACCESS_FS_MAKE_FIFO = 1 << 10
ACCESS_FS_MAKE_BLOCK = 1 << 11
ACCESS_FS_MAKE_SYM = 1 << 12
ACCESS_FS_REFER = 1 << 13      # ABI 2
ACCESS_FS_TRUNCATE = 1 << 14   # ABI 3

WRITE_RIGHTS_ABI1 = (
    ACCESS_FS_WRITE_FILE | ACCESS_FS_REMOVE_DIR | ACCESS_FS_REMOVE_FILE | ACCESS_FS_MAKE_CHAR
    | ACCESS_FS_MAKE_DIR | ACCESS_FS_MAKE_REG | ACCESS_FS_MAKE_SOCK | ACCESS_FS_MAKE_FIFO
    | ACCESS_FS_MAKE_BLOCK | ACCESS_FS_MAKE_SYM
)
# The only handled rights a rule on a regular file (not a directory) may carry.
FILE_RIGHTS = ACCESS_FS_WRITE_FILE | ACCESS_FS_TRUNCATE

EXIT_NOT_CONFINED = 126
EXIT_NOT_FOUND = 127


class _RulesetAttr(ctypes.Structure):
    # Only the first member: the kernel accepts this shorter struct from every ABI version.
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _syscall(number: int, *args: object, what: str) -> int:
    # syscall(2) reads every argument as a long: pass full-width values, never 32-bit ones.
    wide = [a if a is None or not isinstance(a, int) else ctypes.c_long(a) for a in args]
    return _check(_libc.syscall(ctypes.c_long(number), *wide), what)


def abi_version() -> int:
    """The kernel's Landlock ABI version; OSError (ENOSYS, EOPNOTSUPP) when Landlock is absent."""
    return _syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION,
                    what="landlock_create_ruleset")


def handled_rights(abi: int) -> int:
    """Every write-type right the running kernel knows of: unknown bits would be refused."""
    rights = WRITE_RIGHTS_ABI1
    if abi >= 2:
        rights |= ACCESS_FS_REFER
    if abi >= 3:
        rights |= ACCESS_FS_TRUNCATE
    return rights


def restrict_self(writable_dirs: list[str], writable_files: list[str]) -> int:
    """Confine this process and its future children; returns the ABI used. Places that do not
    exist are skipped (nothing can be written there anyway: creating them is denied too)."""
    abi = abi_version()
    handled = handled_rights(abi)
    attr = _RulesetAttr(handled)
    ruleset = _syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.sizeof(attr), 0,
                       what="landlock_create_ruleset")
    try:
        for paths, rights in ((writable_dirs, handled), (writable_files, handled & FILE_RIGHTS)):
            for path in paths:
                _add_rule(ruleset, path, rights)
        # Required unless CAP_SYS_ADMIN; also keeps a confined process from gaining privileges.
        _check(_libc.prctl(ctypes.c_int(PR_SET_NO_NEW_PRIVS), *map(ctypes.c_ulong, (1, 0, 0, 0))),
               "prctl(PR_SET_NO_NEW_PRIVS)")
        _syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0, what="landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


def _add_rule(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        rule = _PathBeneathAttr(rights, fd)
        _syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0,
                 what=f"landlock_add_rule({path})")
    finally:
        os.close(fd)


def _original_environment() -> dict[str, str]:
    """The environment exactly as the daemon passed it. os.environ is not: Python's C-locale
    coercion (PEP 538) may have added LC_CTYPE at start-up, and -I cannot switch that off."""
    with open("/proc/self/environ", "rb") as f:
        raw = f.read()
    env = {}
    for item in raw.split(b"\0"):
        name, sep, value = item.partition(b"=")
        if sep:
            env[os.fsdecode(name)] = os.fsdecode(value)
    return env


def _parse(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    dirs: list[str] = []
    files: list[str] = []
    i = 0
    while i < len(argv) and argv[i] != "--":
        option, value = argv[i], argv[i + 1] if i + 1 < len(argv) else None
        if value is None or option not in ("--writable", "--writable-file"):
            raise ValueError(f"unexpected argument {option!r}")
        (dirs if option == "--writable" else files).append(value)
        i += 2
    command = argv[i + 1:]
    if not command:
        raise ValueError("no command after --")
    return dirs, files, command


def main(argv: list[str]) -> int:
    try:
        dirs, files, command = _parse(argv)
    except ValueError as exc:
        print(f"shipyard-landlock: {exc}\nusage: landlock.py [--writable DIR] [--writable-file FILE] -- "
              "PROGRAM [ARG...]", file=sys.stderr)
        return 2
    env = _original_environment()
    try:
        restrict_self(dirs, files)
    except OSError as exc:
        print(f"shipyard-landlock: not starting {command[0]}: cannot confine it: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_NOT_CONFINED
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        print(f"shipyard-landlock: cannot run {command[0]}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_NOT_FOUND if exc.errno == errno.ENOENT else EXIT_NOT_CONFINED
    return EXIT_NOT_CONFINED  # pragma: no cover - execve does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
