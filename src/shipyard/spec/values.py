"""The scalar vocabulary of a spec: names, addresses, paths, argv lists, env maps.

Each type checks its value where it is declared so that an error points at the very
key that is wrong, with a message in the user's terms (never a regex dump)."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import PurePosixPath
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    WithJsonSchema,
)


class SpecModel(BaseModel):
    """Base of every section: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# -- scalar types ---------------------------------------------------------------------------------

def show(value: object) -> str:
    """A value as the user would recognise it in an error message."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


def regex_check(pattern: str, what: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{show(value)} is not a valid {what}")
        return value

    return AfterValidator(check)


SERVICE_NAME_PATTERN = r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?"
"""The one rule for service names (spec, API paths, CLI): 1-40 of a-z 0-9 -, no dash at
either end. Such a name is safe in a URL path, a file name, a log line and a terminal."""
_SERVICE_NAME = re.compile(SERVICE_NAME_PATTERN)


def is_service_name(value: str) -> bool:
    return _SERVICE_NAME.fullmatch(value) is not None


def _service_name(value: str) -> str:
    if is_service_name(value):
        return value
    if not re.fullmatch(r"[a-z0-9-]+", value):
        raise ValueError(f"{show(value)} must match [a-z0-9-]+ (lowercase letters, digits, dashes)")
    if value.startswith("-") or value.endswith("-"):
        raise ValueError(f"{show(value)} must start and end with a letter or digit")
    if len(value) > 40:
        raise ValueError(f"{show(value)} is {len(value)} characters long; the limit is 40")
    return value


_HOSTNAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def split_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` -> ``("127.0.0.1", 8080)``; ``"[::1]:80"`` -> ``("::1", 80)``."""
    usage = f"{show(value)} is not host:port like 127.0.0.1:8080"
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(usage)
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} in {show(value)} is out of range 1..65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1])), port
        except ValueError:
            raise ValueError(f"{show(host)} in {show(value)} is not an IPv6 address") from None
    if ":" in host:
        raise ValueError(f"{usage} (write IPv6 addresses in brackets: [::1]:8080)")
    if re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{show(host)} in {show(value)} is not an IPv4 address") from None
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{show(host)} in {show(value)} is not a hostname or IP address")
    return host, port


def _listen(value: str) -> str:
    split_listen(value)
    return value


def _env_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError(f"{show(value)} is not a valid environment variable name (letters, digits, _)")
    return value


def _stringify(value: object) -> object:
    """YAML turns `8080`, `true` and `1.5` into numbers and booleans; env values are text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _relative_path(value: str) -> str:
    path = PurePosixPath(value)
    if path.is_absolute() or value.startswith("~"):
        raise ValueError(f"{show(value)} must be a path relative to the image root, not an absolute path")
    if ".." in path.parts:
        raise ValueError(f"{show(value)} must stay inside the image: '..' is not allowed")
    if value.endswith("/") or not path.parts or path.parts == (".",):
        raise ValueError(f"{show(value)} must name a file")
    return value


def _http_path(value: str) -> str:
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError(f"{show(value)} must be a URL path starting with / (like /healthz)")
    return value


def _argv(value: list[str]) -> list[str]:
    if not value[0]:
        raise ValueError("the program (first item) must not be empty")
    return value


def http_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise ValueError(f"{show(value)} must be an http(s) URL like http://127.0.0.1:9090")
    return value


Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
Text = Annotated[str, StringConstraints(min_length=1)]
ServiceName = Annotated[str, AfterValidator(_service_name), WithJsonSchema(
    {"type": "string", "pattern": f"^{SERVICE_NAME_PATTERN}$", "maxLength": 40})]
Listen = Annotated[str, AfterValidator(_listen)]
EnvName = Annotated[str, AfterValidator(_env_name)]
EnvValue = Annotated[str, BeforeValidator(_stringify, json_schema_input_type=str | int | float | bool)]
EnvMap = dict[EnvName, EnvValue]
Argv = Annotated[list[str], Field(min_length=1), AfterValidator(_argv)]
RelativePath = Annotated[str, AfterValidator(_relative_path)]
HttpPath = Annotated[str, AfterValidator(_http_path)]
HeaderName = Annotated[str, regex_check(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", "HTTP header name")]
CookieName = Annotated[str, regex_check(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", "cookie name")]
MetricName = Annotated[str, regex_check(r"[A-Za-z0-9][A-Za-z0-9_.-]*", "metric name (letters, digits, - _ .)")]
Fraction = Annotated[float, Strict(), Field(ge=0, le=1)]
OpenFraction = Annotated[float, Strict(), Field(gt=0, lt=1)]


class ItemProblem(ValueError):
    """A check of a whole list or mapping that is about one item in it: `at` is that item's key
    path below the checked value, so the problem is reported at the item's own line."""

    def __init__(self, message: str, *at: str | int) -> None:
        super().__init__(message)
        self.at = at


def exactly_one(model: BaseModel, keys: tuple[str, ...]) -> str:
    given = [k for k in keys if getattr(model, k) is not None]
    options = " or ".join(keys) if len(keys) == 2 else ", ".join(keys[:-1]) + " or " + keys[-1]
    if not given:
        raise ValueError(f"give one of {options}")
    if len(given) > 1:
        raise ValueError(f"give exactly one of {options}, not {' and '.join(given)}")
    return given[0]
