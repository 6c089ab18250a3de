"""Which files of a build context stay out of the image: simple gitignore-like patterns.

Kept deliberately small so its behaviour fits in one paragraph of the docs:

- blank lines and lines starting with ``#`` are skipped;
- a pattern without a ``/`` matches the *name* of a file or directory at any depth
  (``*.pyc``, ``__pycache__``, ``.git``);
- a pattern with a ``/`` matches the path relative to the context root (a leading ``/``
  is allowed: ``/build``, ``docs/*.md``);
- a trailing ``/`` restricts the pattern to directories (``tmp/``);
- ``*`` and ``?`` never cross a ``/``; ``**`` does (``**/fixtures``, ``logs/**``);
- ``!pattern`` re-includes what an earlier pattern excluded; the last match wins;
- an excluded directory is not entered at all, so nothing below it can come back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

IGNORE_FILE = ".shipyardignore"


def _glob_to_regex(glob: str) -> str:
    """Translate one glob to a regex where only ``**`` crosses directory boundaries."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "*":
            if glob.startswith("**", i):
                i += 2
                if i < n and glob[i] == "/":
                    out.append("(?:.*/)?")
                    i += 1
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = glob.find("]", i + 2 if glob.startswith("[!", i) or glob.startswith("[]", i) else i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = glob[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(glob[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


@dataclass(frozen=True)
class _Rule:
    pattern: str
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool
    anchored: bool

    def matches(self, rel: str, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        subject = rel if self.anchored else rel.rsplit("/", 1)[-1]
        return self.regex.fullmatch(subject) is not None


def _parse(line: str) -> _Rule | None:
    text = line.rstrip("\n\r").rstrip()
    if not text or text.startswith("#"):
        return None
    negate = text.startswith("!")
    if negate:
        text = text[1:]
    dir_only = text.endswith("/")
    text = text.rstrip("/")
    anchored = "/" in text
    text = text.lstrip("/")
    if not text:
        return None
    return _Rule(text, re.compile(_glob_to_regex(text)), negate, dir_only, anchored)


class IgnoreRules:
    """An ordered list of patterns; ``ignored(path, is_dir)`` applies them, last match wins."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self._rules = [r for r in (_parse(p) for p in patterns) if r is not None]

    @classmethod
    def for_context(cls, context: Path, patterns: Iterable[str] = ()) -> IgnoreRules:
        """The spec's patterns followed by those of ``<context>/.shipyardignore``, if present."""
        lines = list(patterns)
        ignore_file = context / IGNORE_FILE
        if ignore_file.is_file():
            lines.extend(ignore_file.read_text(encoding="utf-8").splitlines())
        return cls(lines)

    @property
    def patterns(self) -> list[str]:
        return [("!" if r.negate else "") + r.pattern + ("/" if r.dir_only else "") for r in self._rules]

    def ignored(self, rel: str, is_dir: bool) -> bool:
        """True if the context-relative POSIX path ``rel`` stays out of the image."""
        result = False
        for rule in self._rules:
            if rule.negate == result and rule.matches(rel, is_dir):
                result = not rule.negate
        return result
