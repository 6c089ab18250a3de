"""Text the CLI prints from data, made harmless; and the service-name rule. Shared by the
fast rollback entry (which must stay light: this module imports nothing) and the rest of
the CLI, so both fast paths and every verb show the same thing the same way."""

NAME_RULE = "lowercase letters, digits and dashes, no dash at either end, at most 40 characters"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def valid_service_name(name: str) -> bool:
    """The spec's rule for `service:` (spec/values.py): such a name is safe in a URL as is.
    Written without `re` so that this module stays light; the CLI checks names with it."""
    return 0 < len(name) <= 40 and name[0] != "-" and name[-1] != "-" and all(c in _NAME_CHARS for c in name)


def name_refusal(name: str) -> tuple[str, str]:
    """What to say (message, hint) about a name that cannot be a service's."""
    return (f"{name!r} cannot be a service name ({NAME_RULE})",
            "use the `service:` of the spec file; `shipyard status` lists them")


def outcome_line(r: dict[str, object]) -> str:
    """How the CLI reports a finished rollback, one line (from the rollout's dict form)."""
    return f"{r['kind']} {r['id']}: {r['phase']}" + (f" ({r['reason']})" if r.get("reason") else "")


# Characters that reorder or hide text without being control characters: bidi overrides and
# isolates (a log line can make itself read backwards), line/paragraph separators, BOM.
_INVISIBLE = frozenset("\u061c\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e"
                       "\u2066\u2067\u2068\u2069\ufeff")


def _visible(c: str) -> str:
    o = ord(c)
    if o < 0x20:
        return "^" + chr(o + 0x40)          # ESC -> ^[, BEL -> ^G, CR -> ^M (caret notation)
    if o == 0x7F:
        return "^?"
    if o <= 0x9F:
        return f"\\x{o:02x}"                # C1: CSI (0x9b) and OSC (0x9d) act alone on many terminals
    return f"\\u{o:04x}"


def plain(value: object) -> str:
    """`value` as text that cannot act on a terminal: every control character but newline
    and tab (C0, DEL, C1, bidi overrides, lone surrogates) is shown visibly instead of obeyed;
    a CRLF line end is just a line end. Used for everything the CLI prints from data."""
    s = str(value).replace("\r\n", "\n")
    if s.isprintable():
        return s
    return "".join(_visible(c) if c not in "\n\t" and (ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in _INVISIBLE
                                                       or 0xD800 <= ord(c) <= 0xDFFF) else c for c in s)
