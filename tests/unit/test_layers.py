"""The architecture as a test: every module's imports (module level, TYPE_CHECKING blocks and
function bodies alike) parsed with `ast`, and checked against the seven rules of
docs/architecture.md. A failure names the file, the line and the import that breaks a rule.

The source tree is the one `import shipyard` finds, so the same test can be pointed at
another checkout with PYTHONPATH=<checkout>/src."""

from __future__ import annotations

import ast
import importlib.util
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_spec = importlib.util.find_spec("shipyard")
assert _spec is not None and _spec.origin is not None
SRC = Path(_spec.origin).parent          # .../src/shipyard


@dataclass(frozen=True)
class Import:
    source: str          # importing module, e.g. shipyard.engine.driver
    target: str          # imported module (shipyard.*: the most specific module that exists) or a top-level name
    line: int
    function: str | None  # the outermost function the import sits in, None at module level

    def where(self) -> str:
        return f"{self.source.replace('.', '/')}.py:{self.line} imports {self.target}"


def _module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


MODULES = _module_names()
PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


def _resolve(name: str) -> str:
    """The most specific existing module `name` denotes (shipyard.x.Y -> shipyard.x)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str) -> None:
        self.module = module
        self.found: list[Import] = []
        self._functions: list[str] = []

    def _add(self, target: str, line: int) -> None:
        if target.startswith("shipyard"):
            target = _resolve(target)
        else:
            target = target.split(".")[0]
        self.found.append(Import(self.module, target, line, self._functions[0] if self._functions else None))

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._functions.append(node.name)
        self.generic_visit(node)
        self._functions.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            package = self.module if self.module in PACKAGES else self.module.rsplit(".", 1)[0]
            for _ in range(node.level - 1):
                package = package.rsplit(".", 1)[0]
            base = f"{package}.{node.module}" if node.module else package
        else:
            base = node.module or ""
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self._add(sub if sub in MODULES else base, node.lineno)


def _parse(module: str) -> ast.Module:
    return ast.parse(MODULES[module].read_text(encoding="utf-8"), filename=str(MODULES[module]))


def _collect() -> list[Import]:
    found = []
    for module in MODULES:
        collector = _Collector(module)
        collector.visit(_parse(module))
        found.extend(collector.found)
    return found


IMPORTS = _collect()


def _in(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _imports_of(*prefixes: str) -> Iterator[Import]:
    return (i for i in IMPORTS if _in(i.source, *prefixes))


def _fail(rule: str, bad: Iterable[str]) -> None:
    bad = sorted(set(bad))
    assert not bad, f"{rule}:\n  " + "\n  ".join(bad)


# -- the rules (docs/architecture.md, "Dependency rules") -----------------------------------

PURE_HELPERS = ("shipyard.errors", "shipyard.redaction")
"""Top-level modules of plain functions and exceptions that any layer may use."""

ROLLOUT_MAY_IMPORT = ("shipyard.rollout", "shipyard.spec", "shipyard.router.table", *PURE_HELPERS)
IO_LIBRARIES = ("asyncio", "socket", "selectors", "sqlite3", "subprocess", "httpx", "psycopg", "os", "signal",
                "threading", "multiprocessing", "uvicorn", "starlette")


def test_rule_1_rollout_is_pure() -> None:
    """rollout/ imports only spec/, errors, rollout/ and value types, and no I/O library."""
    assert "shipyard.rollout.model" in MODULES, "no rollout/model.py: the rule would check nothing"
    _fail("rule 1: rollout/ imports only spec/, errors, rollout/ and value types (router/table.py)",
          [f"{i.where()}" for i in _imports_of("shipyard.rollout")
           if (i.target.startswith("shipyard") and not _in(i.target, *ROLLOUT_MAY_IMPORT))
           or i.target in IO_LIBRARIES])


ENGINE_MAY_IMPORT = (
    "shipyard.engine", "shipyard.rollout", "shipyard.spec",
    # the libraries
    "shipyard.images", "shipyard.database", "shipyard.drift", "shipyard.fleet", "shipyard.checklist",
    "shipyard.building", "shipyard.analysis", "shipyard.certificates", "shipyard.x509",
    # value objects and plain helpers (no adapter behind them)
    "shipyard.router.table", "shipyard.runtime.environment", "shipyard.paths", "shipyard.histogram",
    *PURE_HELPERS,
)
ENGINE_MAY_NOT = ("shipyard.analysis.providers",)
ENGINE_IO = ("sqlite3", "httpx", "socket", "subprocess", "psycopg", "uvicorn", "starlette")


def test_rule_2_engine_reaches_the_world_only_through_ports() -> None:
    """engine/ imports rollout/, spec/, its ports and the libraries; never an adapter, server/ or cli/."""
    assert "shipyard.engine.ports" in MODULES, "no engine/ports.py: nothing separates the engine from its adapters"
    _fail("rule 2: engine/ imports only rollout/, spec/, engine/ (its ports) and the libraries",
          [i.where() for i in _imports_of("shipyard.engine")
           if (i.target.startswith("shipyard")
               and (not _in(i.target, *ENGINE_MAY_IMPORT) or _in(i.target, *ENGINE_MAY_NOT)))
           or i.target in ENGINE_IO])


ADAPTERS = {
    # adapter module (prefix)           -> the family that may import it besides server/daemon.py
    "shipyard.state": "shipyard.state",
    "shipyard.runtime.local": "shipyard.runtime",
    "shipyard.runtime.sandbox": "shipyard.runtime",
    "shipyard.runtime.landlock": "shipyard.runtime",
    "shipyard.runtime.health": "shipyard.runtime",
    "shipyard.runtime.ports": "shipyard.runtime",
    "shipyard.runtime.ssh": "shipyard.runtime",
    "shipyard.router.embedded": "shipyard.router",
    "shipyard.router.embedded_process": "shipyard.router",
    "shipyard.router.embedded_legacy": "shipyard.router",
    "shipyard.router.listeners": "shipyard.router",
    "shipyard.router.control_client": "shipyard.router",
    "shipyard.router.control": "shipyard.router",
    "shipyard.router.dataplane": "shipyard.router",
    "shipyard.router.proxy": "shipyard.router",
    "shipyard.router.client": "shipyard.router",
    "shipyard.router.exchange": "shipyard.router",
    "shipyard.router.upstream": "shipyard.router",
    "shipyard.router.metrics": "shipyard.router",
    "shipyard.analysis.providers": "shipyard.analysis.providers",
}
WIRING = ("shipyard.server.daemon",)


def test_rule_3_only_the_daemon_picks_concrete_adapters() -> None:
    bad = []
    for i in IMPORTS:
        for adapter, family in ADAPTERS.items():
            if _in(i.target, adapter) and not _in(i.source, family, *WIRING):
                bad.append(f"{i.where()} (a concrete adapter: only server/daemon.py picks one)")
    _fail("rule 3: only server/daemon.py (and tests) import concrete adapters", bad)


SERVER_MAY_IMPORT_FROM_ENGINE = ("shipyard.engine.controller", "shipyard.engine.queries", "shipyard.engine.ports")


def test_rule_4_server_reads_through_engine_queries() -> None:
    bad = [f"{i.where()} (server/ uses engine/controller, engine/queries and the ports only)"
           for i in _imports_of("shipyard.server") if i.source not in WIRING
           and _in(i.target, "shipyard.engine") and not _in(i.target, *SERVER_MAY_IMPORT_FROM_ENGINE)]
    for module in MODULES:
        if not _in(module, "shipyard.server") or module in WIRING:
            continue
        for node in ast.walk(_parse(module)):
            if (isinstance(node, ast.Attribute) and node.attr == "d"
                    and ast.unparse(node.value).split(".")[-1] == "controller"):
                bad.append(f"{module.replace('.', '/')}.py:{node.lineno} reads {ast.unparse(node)} "
                           "(read through controller.queries)")
    _fail("rule 4: server/ reads through engine/queries.py, never controller.d", bad)


LEGACY_DATA_PLANE = ("shipyard.router.proxy", "shipyard.router.client", "shipyard.router.exchange",
                     "shipyard.router.upstream", "shipyard.router.metrics", "shipyard.router.control")


def data_plane() -> tuple[str, ...]:
    """router/dataplane/ once it exists; before that, the modules the proxy process runs."""
    return ("shipyard.router.dataplane",) if "shipyard.router.dataplane" in MODULES else LEGACY_DATA_PLANE


def test_rule_5_the_data_plane_runs_alone() -> None:
    plane = data_plane()
    assert any(_in(m, *plane) for m in MODULES), "no data-plane module found: the rule would check nothing"
    allowed = (*plane, "shipyard.router.table", "shipyard.router.wire", "shipyard.errors", "shipyard.histogram")
    _fail("rule 5: router/dataplane/ imports only router/table.py, router/wire.py, errors, histogram",
          [i.where() for i in _imports_of(*plane) if i.target.startswith("shipyard") and not _in(i.target, *allowed)])


CLI = ("shipyard.cli", "shipyard.cli_changes", "shipyard.cli_checklist", "shipyard.cli_db", "shipyard.cli_drift",
       "shipyard.entry")
"""The cli/ package, and until it exists the CLI's modules at the package root."""
CLI_MAY_IMPORT = (
    *CLI, "shipyard",                                   # itself, and the root package for __version__
    "shipyard.client",                                  # the HTTP API client: the CLI's one way to the daemon
    "shipyard.spec", "shipyard.errors", "shipyard.paths",
    # local-only verbs: validate / schema / build / images, db lint and db plan, the demo
    "shipyard.images", "shipyard.building", "shipyard.database", "shipyard.devtools", "shipyard.certificates",
    # pure vocabulary computed on local input (plan's exposure, an outcome's wording, checklist rates)
    "shipyard.rollout", "shipyard.checklist", "shipyard.redaction",
)
CLI_SERVE = ("shipyard.server.daemon", "serve")
"""`shipyard serve` runs the daemon in-process: the one import of server/ the CLI makes, inside that verb."""


def test_rule_6_the_cli_talks_to_the_daemon_only_over_http() -> None:
    bad = []
    for i in _imports_of(*CLI):
        if not i.target.startswith("shipyard") or _in(i.target, *CLI_MAY_IMPORT):
            continue
        if (i.target, i.function) == CLI_SERVE:
            continue
        bad.append(i.where() + (f" (inside {i.function}())" if i.function else ""))
    _fail("rule 6: cli/ imports only spec, errors, paths, local-verb libraries and cli/ "
          "(server.daemon inside `serve` only)", bad)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _describe(component: list[str], key: dict[str, str] | None = None) -> str:
    members = set(component)
    links = sorted({i.where() for i in IMPORTS if i.target.startswith("shipyard.")
                    and (key or {}).get(i.source, i.source) in members
                    and (key or {}).get(i.target, i.target) in members
                    and (key or {}).get(i.source, i.source) != (key or {}).get(i.target, i.target)})
    return " <-> ".join(component) + ":\n      " + "\n      ".join(links)


def test_rule_7_no_cycles_between_modules() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for i in IMPORTS:
        if i.target in MODULES and i.target != i.source:
            edges[i.source].add(i.target)
    _fail("rule 7: no import cycles between modules", [_describe(c) for c in _cycles(edges)])


def package_of(module: str) -> str:
    """shipyard.engine.driver -> engine; top-level modules (errors, paths...) are their own
    package, except the CLI's modules at the root (until cli/ exists), which are `cli`."""
    if _in(module, *CLI):
        return "cli"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_rule_7_no_cycles_between_packages() -> None:
    key = {m: package_of(m) for m in MODULES}
    edges: dict[str, set[str]] = defaultdict(set)
    for i in IMPORTS:
        if i.target in MODULES and key[i.source] != key[i.target] and i.target != "shipyard":
            edges[key[i.source]].add(key[i.target])
    _fail("rule 7: no import cycles between packages", [_describe(c, key) for c in _cycles(edges)])


# -- the checker itself ---------------------------------------------------------------------

@pytest.mark.parametrize(("code", "expected"), [
    ("import sqlite3", ("sqlite3", None)),
    ("from shipyard.state.sqlite import SqliteStore", ("shipyard.state.sqlite", None)),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from shipyard.state import sqlite",
     ("shipyard.state.sqlite", None)),
    ("def serve():\n    from shipyard.server.daemon import run", ("shipyard.server.daemon", "serve")),
    ("from .model import Rollout", ("shipyard.rollout.model", None)),
])
def test_the_collector_sees_every_kind_of_import(code: str, expected: tuple[str, str | None]) -> None:
    collector = _Collector("shipyard.rollout.bluegreen")
    collector.visit(ast.parse(code))
    assert (collector.found[-1].target, collector.found[-1].function) == expected


def test_the_cycle_finder_finds_a_cycle_and_nothing_else() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
