"""`domains:` — the Host names a service answers on its `listen` address, so that several
services can share one address (the router picks the service by Host, then by SNI for TLS).

A name is an exact host (`shop.example.test`) or a leading wildcard (`*.shop.example.test`,
any name that ends in `.shop.example.test`, at any depth; not `shop.example.test` itself).
Names are lowercased as given, since Host is case-insensitive; what is stored and compared is
the lowercase form."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
MAX_NAME = 253


def _domain(value: str) -> str:
    """One entry of `domains`, lowercased; ValueError saying what is wrong with it."""
    shown = f'"{value}"'
    name = value.lower()
    if not name:
        raise ValueError("an empty name: write a host name like shop.example.test")
    if ":" in name or "/" in name:
        raise ValueError(f"{shown} is not a host name: a domain carries no port, scheme or path "
                         "(the port is `listen`'s); write it like shop.example.test")
    if name.endswith("."):
        raise ValueError(f"{shown} ends with a dot: write it without the trailing dot")
    rest = name[2:] if name.startswith("*.") else name
    if "*" in rest:
        raise ValueError(f"{shown}: a wildcard is only a leading \"*.\" before a name, like \"*.shop.example.test\"")
    if len(rest) > MAX_NAME:
        raise ValueError(f"{shown} is {len(rest)} characters long; a host name is at most {MAX_NAME}")
    for label in rest.split("."):
        if not _LABEL.fullmatch(label):
            why = ("an empty label (two dots in a row?)" if not label else
                   f"label \"{label}\" is longer than 63 characters" if len(label) > 63 else
                   f"label \"{label}\" may hold only a-z, 0-9 and inner dashes (RFC 1123)")
            raise ValueError(f"{shown} is not a valid host name: {why}")
    return name


def _unique(names: list[str]) -> list[str]:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f'"{name}" is listed twice (names are compared lowercased)')
        seen.add(name)
    return names


Domain = Annotated[str, AfterValidator(_domain)]
Domains = Annotated[list[Domain], Field(min_length=1), AfterValidator(_unique)]
"""`domains:` — at least one name (leave the key out to take every Host on `listen`)."""


def is_wildcard(name: str) -> bool:
    return name.startswith("*.")


def overlapping(mine: list[str] | tuple[str, ...], theirs: list[str] | tuple[str, ...]) -> list[str]:
    """The names two services both claim: the same exact name or the same wildcard. (A
    wildcard beside an exact name under it is no overlap: the exact name wins for its host.)"""
    other = set(theirs)
    return [name for name in mine if name in other]
