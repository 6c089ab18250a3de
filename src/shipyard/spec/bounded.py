"""YAML that cannot be turned against the reader: limits on size, nesting, aliases and the
node count once aliases are expanded. An alias bomb (9 anchors of 9 aliases each) is a few
hundred bytes that expand to 387 million nodes, and every walk over the spec (duplicate keys,
validation) would visit all of them; deep nesting overflows the recursive composer. Each limit
is far above what a real spec uses (the example shop: ~100 nodes, depth 5, no aliases)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from shipyard.errors import SpecError

MAX_SPEC_BYTES = 256 * 1024
"""A spec is a page or two of YAML. PyYAML reads ~1 MiB/s, so 256 KiB (and MAX_NODES) keep
any one parse under ~0.25 s: the daemon parses off its event loop, but not every caller can."""
MAX_DEPTH = 64
MAX_ALIASES = 200
MAX_NODES = 5_000
"""Counted with every alias expanded: what a walk over the parsed spec will visit."""
LIMITS_HINT = "a spec is a small file: simplify the YAML (fewer anchors/aliases, less nesting)"


class SpecTooLarge(SpecError):
    """The spec goes past one of the limits above; the message names which one."""


def too_big(source: str, size: int) -> SpecTooLarge:
    return SpecTooLarge(f"{source}: the spec is {size} bytes; the limit is {_limit_text()}",
                        "a spec is a page or two of YAML: is this the right file?")


def read_bounded(file: Path, shown: str, regular_only: bool = False) -> bytes:
    """At most MAX_SPEC_BYTES of `file` (SpecTooLarge naming it `shown` beyond); OSError as raised.
    `regular_only`: a FIFO, device or directory is refused without blocking on it."""
    fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC | (os.O_NONBLOCK if regular_only else 0))
    try:
        f = open(fd, "rb")                 # closed by the with below
    except BaseException:
        os.close(fd)                       # a directory: open() refuses it, the fd is still ours
        raise
    with f:
        if regular_only and not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise SpecError(f"{file} is not a regular file")
        size = os.fstat(f.fileno()).st_size
        if size > MAX_SPEC_BYTES:          # refused before reading: a 50 MB file costs nothing
            raise too_big(shown, size)
        raw = f.read(MAX_SPEC_BYTES + 1)   # a file that grows meanwhile is still bounded
    if len(raw) > MAX_SPEC_BYTES:
        raise too_big(shown, len(raw))
    return raw


def read_inventory(file: Path, shown: str) -> str:
    """The text of a fleet's hosts_file; SpecError saying why it cannot be used."""
    try:
        return read_bounded(file, shown, regular_only=True).decode("utf-8")
    except FileNotFoundError:
        raise SpecError(f"{file} does not exist (hosts_file is relative to the spec file's directory)") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{file} is not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise SpecError(f"{file} cannot be read ({exc.strerror or exc})") from None


def check_text_size(text: str, source: str) -> None:
    """Refuse oversized text before any parsing (chars <= bytes, so the cheap test comes first)."""
    if len(text) > MAX_SPEC_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_SPEC_BYTES:
        raise too_big(source, len(text.encode("utf-8", "surrogatepass")))


def _limit_text() -> str:
    return f"{MAX_SPEC_BYTES} bytes ({MAX_SPEC_BYTES // 1024} KiB)"


class BoundedComposer:
    """Mixin for a yaml Loader: counts depth and aliases while composing, so a bomb is refused
    before it is expanded and deep nesting before Python's recursion limit is reached."""

    spec_source = "<spec>"
    _depth = 0
    _aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        loader: Any = self
        event = loader.peek_event()
        where = f"{self.spec_source}:{event.start_mark.line + 1}"
        if isinstance(event, yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise SpecTooLarge(f"{where} more than {MAX_ALIASES} aliases (*name); the limit is {MAX_ALIASES}",
                                   LIMITS_HINT)
            return super().compose_node(parent, index)  # type: ignore[misc]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise SpecTooLarge(f"{where} nested more than {MAX_DEPTH} levels deep; the limit is {MAX_DEPTH}",
                                   LIMITS_HINT)
            return super().compose_node(parent, index)  # type: ignore[misc]
        finally:
            self._depth -= 1


def check_expanded(root: yaml.Node, source: str) -> None:
    """Refuse a document whose alias-expanded tree is too big, too deep, or a cycle (`&a [*a]`).

    Sizes are memoised per node, so this is linear in the composed graph, not in its expansion."""
    memo: dict[int, tuple[int, int]] = {}     # id(node) -> (nodes, height) when expanded
    active: set[int] = set()

    def measure(node: yaml.Node, depth: int) -> tuple[int, int]:
        key = id(node)
        where = f"{source}:{node.start_mark.line + 1}"
        if key in active:
            raise SpecTooLarge(f"{where} an alias refers to a node that contains it (a cycle)",
                               "an anchor cannot be used inside itself")
        if key not in memo:
            active.add(key)
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            else:
                children = []
            count, height = 1, 0
            for child in children:
                c, h = measure(child, depth + 1)
                count, height = count + c, max(height, h + 1)
                if count > MAX_NODES:
                    raise SpecTooLarge(f"{where} expands to more than {MAX_NODES} nodes once aliases are "
                                       f"expanded; the limit is {MAX_NODES}", LIMITS_HINT)
            active.discard(key)
            memo[key] = (count, height)
        count, height = memo[key]
        if depth + height > MAX_DEPTH:
            raise SpecTooLarge(f"{where} nested more than {MAX_DEPTH} levels deep once aliases are expanded; "
                               f"the limit is {MAX_DEPTH}", LIMITS_HINT)
        return count, height

    measure(root, 1)
