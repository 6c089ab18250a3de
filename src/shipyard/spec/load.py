"""Reading shipyard.yaml: YAML with positions, validation, and errors a person can act on.

The YAML is composed into nodes first so every problem can be reported as
``file:line key.path: what is wrong``; every problem is reported at once, so a user
fixes the file in one pass instead of one error per run."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, NoReturn

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from shipyard.errors import SpecError

from .bounded import BoundedComposer, check_expanded, check_text_size, read_bounded, read_inventory
from .durations import FROM_FILE
from .fleet import INVENTORY_FAILED, Hosts
from .models import Spec, register_json_validator
from .schema import resolve_loc

DOCS_HINT = "every key, its default and its format are described in docs/spec.md"
DURATION_HINT = "durations are strings with a unit: 500ms, 30s, 10m, 1h30m"

_STRING_MAPS: tuple[tuple[str, ...], ...] = (
    ("build", "env"),
    ("run", "env"),
    ("strategy", "blue_green", "preview_checks", "*", "headers"),
    ("fleet", "hosts", "*", "labels"),
)
"""Maps whose values are text: YAML numbers/booleans there keep the exact text the user wrote."""


class SpecInvalid(SpecError):
    """The spec file was read but its content is wrong; `problems` has one line per problem."""

    def __init__(self, problems: list[str], hint: str | None = None) -> None:
        super().__init__("\n".join(problems), hint)
        self.problems = problems


class _Loader(BoundedComposer, yaml.SafeLoader):
    """Safe YAML with limits (bounded.py), except that keys stay text: `ON:` or `1:` is a key,
    not a boolean or a number."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode):
                key.tag = "tag:yaml.org,2002:str"
        return super().construct_mapping(node, deep=deep)


# -- positions ------------------------------------------------------------------------------------

def _locate(root: yaml.Node | None, path: tuple[str | int, ...]) -> tuple[int | None, yaml.Node | None, int]:
    """Line (1-based) of the deepest part of `path` found in the YAML, its node, and how deep it got."""
    node, line, depth = root, None, 0
    for element in path:
        found = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(element):
                    found = (key.start_mark.line + 1, value)
        elif isinstance(node, yaml.SequenceNode) and isinstance(element, int) and 0 <= element < len(node.value):
            item = node.value[element]
            found = (item.start_mark.line + 1, item)
        if found is None:
            break
        line, node = found
        depth += 1
    return line, (node if depth == len(path) else None), depth


def _duplicates(node: yaml.Node, path: tuple[str | int, ...], source: str, out: list[tuple[int, str]]) -> None:
    """PyYAML silently keeps the last of two equal keys; a spec must not hide such a mistake."""
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.value == "<<":
                continue
            line = key.start_mark.line + 1
            if key.value in first:
                out.append((line, f"{source}:{line} {_dotted(path + (key.value,))}: duplicate key "
                                  f"(first given at line {first[key.value]}); remove one of them"))
            else:
                first[key.value] = line
            _duplicates(value, path + (key.value,), source, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _duplicates(item, path + (i,), source, out)


def _keep_raw_text(data: Any, root: yaml.Node, pattern: tuple[str, ...], at: tuple[str | int, ...] = ()) -> None:
    if not pattern:
        if not isinstance(data, dict):
            return
        _, node, _ = _locate(root, at)
        if not isinstance(node, yaml.MappingNode):
            return
        for key, value in node.value:
            if (isinstance(key, yaml.ScalarNode) and isinstance(value, yaml.ScalarNode)
                    and isinstance(data.get(key.value), bool | int | float)):
                data[key.value] = value.value
        return
    head, rest = pattern[0], pattern[1:]
    if head == "*" and isinstance(data, list):
        for i, item in enumerate(data):
            _keep_raw_text(item, root, rest, at + (i,))
    elif isinstance(data, dict) and head in data:
        _keep_raw_text(data[head], root, rest, at + (head,))


# -- messages -------------------------------------------------------------------------------------

def _dotted(path: tuple[str | int, ...]) -> str:
    out = ""
    for element in path:
        if isinstance(element, int):
            out += f"[{element}]"
        elif element.replace("_", "").replace("-", "").isalnum():
            out += f".{element}" if out else element
        else:
            out += f"[{json.dumps(element)}]"
    return out


def _got(value: Any, node: yaml.Node | None) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if value is None:
        return "nothing"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict | BaseModel):
        return "a mapping"
    if isinstance(node, yaml.ScalarNode):
        return node.value
    return json.dumps(value) if isinstance(value, bool) else repr(value)


def _describe(err: ErrorDetails, holder: type[BaseModel] | None, node: yaml.Node | None) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    got = _got(value, node)
    if kind == "missing":
        return "required key missing"
    if kind == "extra_forbidden":
        if holder is None:
            return "unknown key"
        allowed = list(holder.model_fields)
        text = f"unknown key (expected one of: {', '.join(allowed)})"
        key = str(err["loc"][-1])
        close = difflib.get_close_matches(key, allowed, n=1)
        return f"{text}; did you mean {close[0]}?" if close else text
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", err["msg"]))
    if kind == "string_type":
        quote = f' (quote it: "{got}")' if isinstance(value, bool | int | float) else ""
        return f"expected a string, got {got}{quote}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number, got {got}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {got}"
    if kind in ("list_type", "tuple_type"):
        return f"expected a list, got {got}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping (key: value), got {got}"
    bounds = {"greater_than_equal": ("ge", "at least"), "greater_than": ("gt", "greater than"),
              "less_than_equal": ("le", "at most"), "less_than": ("lt", "less than")}
    if kind in bounds:
        key, words = bounds[kind]
        bound = ctx.get(key)
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return f"must be {words} {bound}, got {got}"
    if kind in ("too_short", "string_too_short"):
        least = ctx.get("min_length", 1)
        return "must not be empty" if least == 1 else f"needs at least {least} items"
    if kind in ("too_long", "string_too_long"):
        unit = "characters" if kind == "string_too_long" else "items"
        return f"must have at most {ctx.get('max_length')} {unit}"
    if kind == "literal_error":
        return f"must be one of {str(ctx.get('expected', '')).replace(chr(39), chr(34))}; got {got}"
    message = err["msg"]  # our own custom errors, and a plain fallback for anything unforeseen
    if message.startswith("Input should be "):
        message = "expected " + message.removeprefix("Input should be ")
    return f"{message}; got {got}"


def _problem_lines(exc: ValidationError, source: str, root: yaml.Node | None,
                   model: Any = Spec) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for err in exc.errors(include_url=False):
        path, holder = resolve_loc(err["loc"], model)
        path += getattr((err.get("ctx") or {}).get("error"), "at", ())   # values.ItemProblem
        anchor = path[:-1] if err["type"] == "missing" else path
        line, _, depth = _locate(root, anchor)
        _, node, _ = _locate(root, path)
        if depth == 0:
            line = None
        where = f"{source}:{line}" if line is not None else f"{source}:"
        what = f"{_dotted(path)}: " if path else ""
        out.append((line or 0, f"{where} {what}{_describe(err, holder, node)}"))
    return out


def _raise(problems: list[tuple[int, str]]) -> NoReturn:
    ordered: list[str] = []
    for _, text in sorted(problems, key=lambda p: p[0]):
        if text not in ordered:
            ordered.append(text)
    hint = DOCS_HINT
    if any("duration" in text for text in ordered):
        hint = f"{DURATION_HINT}; {DOCS_HINT}"
    raise SpecInvalid(ordered, hint)


# -- entry points ---------------------------------------------------------------------------------

def validate_data(data: Any, source: str, base_dir: Path, root: yaml.Node | None = None) -> Spec:
    """Validate already-parsed data. With `root` (the YAML nodes) the data is a file: lines are
    reported and durations must be strings; without it the data is JSON from another process."""
    if not isinstance(data, dict):
        line = f"{source}:{root.start_mark.line + 1}" if root is not None else f"{source}:"
        _raise([(0, f"{line} the top level must be a mapping (service: ..., listen: ..., run: ...), "
                    f"got {_got(data, root)}")])
    problems: list[tuple[int, str]] = []
    inventory_ok = True
    if root is not None:
        _duplicates(root, (), source, problems)
        for pattern in _STRING_MAPS:
            _keep_raw_text(data, root, pattern)
        inventory_ok = _inline_inventory(data, root, source, base_dir, problems)
    try:
        spec = Spec.model_validate(data, context={FROM_FILE: root is not None, INVENTORY_FAILED: not inventory_ok})
    except ValidationError as exc:
        _raise(problems + _problem_lines(exc, source, root))
    if problems:
        _raise(problems)
    return spec._located(source, base_dir)


def _inline_inventory(data: dict[str, Any], root: yaml.Node, source: str, base_dir: Path,
                      problems: list[tuple[int, str]]) -> bool:
    """Read `fleet.hosts_file` (relative to the spec file) into `fleet.hosts`, with the spec's own
    limits and file:line errors; False when it cannot be used (its problems are in `problems`)."""
    fleet = data.get("fleet")
    if not isinstance(fleet, dict) or not isinstance(fleet.get("hosts_file"), str):
        return True
    line = _locate(root, ("fleet", "hosts_file"))[0] or 0
    name = fleet["hosts_file"]
    if "hosts" in fleet:
        problems.append((line, f"{source}:{line} fleet: give exactly one of hosts or hosts_file, not both"))
        return True
    found: list[tuple[int, str]] = []
    try:
        inventory, inventory_root = _compose(read_inventory(Path(base_dir) / Path(name).expanduser(), name), name)
    except SpecInvalid as exc:
        found = [(0, text) for text in exc.problems]
    except SpecError as exc:
        found = [(0, f"{source}:{line} fleet.hosts_file: {exc.message}")]
    else:
        if inventory_root is None or not isinstance(inventory, list):
            at = f"{name}:{inventory_root.start_mark.line + 1}" if inventory_root is not None else f"{name}:"
            found = [(0, f"{at} the inventory must be a list of hosts like "
                         f"- {{name: web-1, address: 10.0.0.1}}, got {_got(inventory, inventory_root)}")]
        else:
            _duplicates(inventory_root, (), name, found)
            _keep_raw_text(inventory, inventory_root, ("*", "labels"))
            try:
                _HOSTS.validate_python(inventory, context={FROM_FILE: True})
            except ValidationError as exc:
                found += _problem_lines(exc, name, inventory_root, Hosts)
    if found:
        problems += [(line, text) for _, text in sorted(found, key=lambda p: p[0])]
        return False
    fleet["hosts"] = inventory
    return True


_HOSTS: TypeAdapter[Any] = TypeAdapter(Hosts)


def _compose(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    check_text_size(text, source)
    try:
        loader = _Loader(text)          # the reader refuses control characters right here
    except yaml.reader.ReaderError as exc:
        raise _unreadable(text, source, exc) from None
    loader.spec_source = source
    try:
        root = loader.get_single_node()
        if root is not None:
            check_expanded(root, source)
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else f"{source}:"
        problem = exc.problem or exc.context or "cannot be parsed"
        raise SpecInvalid([f"{where} not valid YAML: {problem}"],
                          "check the indentation and quoting around that position") from None
    except yaml.YAMLError as exc:
        raise SpecInvalid([f"{source}: not valid YAML: {exc}"]) from None
    finally:
        loader.dispose()
    return data, root


def _unreadable(text: str, source: str, exc: yaml.reader.ReaderError) -> SpecInvalid:
    """A control character (or other unprintable one) at its file:line:column, in words."""
    before = text[:exc.position]
    line, column = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
    char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "?")
    return SpecInvalid([f"{source}:{line}:{column} not valid YAML: control character U+{char:04X} is not "
                        "allowed in a spec"],
                       "remove it; inside a double-quoted string it can be written as an escape like \\x01")


def _parse(text: str, source: str, base_dir: Path) -> tuple[Spec, yaml.Node]:
    data, root = _compose(text, source)
    if root is None:
        raise SpecInvalid([f"{source}: the file is empty"],
                          "a spec needs at least service, listen and run; see shipyard.example.yaml")
    return validate_data(data, source, Path(base_dir), root), root


def parse_spec(text: str, source: str, base_dir: Path) -> Spec:
    """A Spec from YAML text; `source` names it in errors, `base_dir` anchors relative paths."""
    return _parse(text, source, base_dir)[0]


def _check_context(spec: Spec, root: yaml.Node) -> None:
    line, _, depth = _locate(root, ("build", "context"))
    where = f"{spec.source}:{line}" if depth else f"{spec.source}:"
    directory = spec.context_dir
    if not directory.exists():
        raise SpecInvalid([f"{where} build.context: directory {directory} does not exist"],
                          "build.context is relative to the directory of the spec file")
    if not directory.is_dir():
        raise SpecInvalid([f"{where} build.context: {directory} is not a directory"],
                          "build.context names the directory whose files make up the image")


def load_spec(path: str | Path) -> Spec:
    """Read, validate and return the spec at `path`; also checks that build.context exists."""
    file = Path(path)
    try:
        text = read_bounded(file, file.name).decode("utf-8")
    except FileNotFoundError:
        raise SpecError(f"{file}: no such spec file",
                        "check the path, or create it (start from shipyard.example.yaml)") from None
    except IsADirectoryError:
        raise SpecError(f"{file}: is a directory, not a spec file", f"did you mean {file / 'shipyard.yaml'}?") from None
    except PermissionError:
        raise SpecError(f"{file}: cannot be read (permission denied)", "check the file's permissions") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{file}: not UTF-8 text (bad byte at offset {exc.start})",
                        "save the file as UTF-8") from None
    except OSError as exc:
        raise SpecError(f"{file}: cannot be read ({exc.strerror or exc})", "check the path") from None
    spec, root = _parse(text, file.name, file.parent)
    _check_context(spec, root)
    return spec


register_json_validator(lambda data, source, base_dir: validate_data(data, source=source, base_dir=base_dir))
