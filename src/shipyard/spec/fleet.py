"""`fleet:` — the same service on several hosts over SSH: the inventory, how to log in, where
instances go (placement), how a release starts across hosts (batch) and when a silent host
is given up (lost_after).

Checks that need the whole section (a spread label on every host, a total the hosts can
hold) are made here, at load time, so a spec that cannot be placed never reaches a rollout.
The runtime re-checks against the hosts that are up at that moment (fleet/placement.py)."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    Strict,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from .durations import PositiveDuration, format_duration
from .values import Bool, ItemProblem, SpecModel, Text, exactly_one, show

INVENTORY_FAILED = "shipyard.spec.inventory_failed"
"""Validation-context flag: the hosts_file could not be read or is invalid (its own problems
are reported with its own file:line), so a missing `hosts` is not a second problem."""

MAX_HOSTS = 1000
MIN_LOST_AFTER = 5.0
"""A host answers a heartbeat every second or so; below 5s a slow SSH round trip or a busy
host would already count as lost and have its instances replaced for nothing."""

# -- scalars --------------------------------------------------------------------------------------

_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_DNS_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_LABEL_TEXT = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
_PERCENT = re.compile(r"(\d{1,3})%")


def _host_name(value: str) -> str:
    if not _HOST_NAME.fullmatch(value):
        if len(value) > 63:
            raise ValueError(f"{show(value)} is {len(value)} characters long; a host name is at most 63")
        raise ValueError(f"{show(value)} is not a host name: 1-63 of a-z, 0-9 and inner dashes "
                         "(an RFC 1123 label, like web-1)")
    return value


def canonical_address(value: str) -> str:
    """The form two addresses are compared in: an IP in its compressed form, a DNS name lowercased."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value.lower().removesuffix(".")


def _address(value: str) -> str:
    text = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        if text != value:
            raise ValueError(f"{show(value)}: write an IPv6 address without brackets ({text}); "
                             "the port is ssh.port")
        return value
    if ":" in value or "/" in value or "@" in value:
        raise ValueError(f"{show(value)} is not an address: give an IPv4 or IPv6 address or a DNS name, "
                         "without user, port or path (those are ssh.user and ssh.port)")
    name = value.removesuffix(".")
    labels = name.split(".")
    if re.fullmatch(r"[\d.]+", name):
        raise ValueError(f"{show(value)} is not a valid IPv4 address")
    if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{show(value)} is not an IPv4/IPv6 address or a DNS name (labels of letters, "
                         "digits and inner dashes, at most 63 characters each)")
    return value


def _label_text(what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not _LABEL_TEXT.fullmatch(value):
            raise ValueError(f"{show(value)} is not a valid label {what}: 1-63 of letters, digits, - _ . "
                             "starting and ending with a letter or digit")
        return value
    return AfterValidator(check)


def _share(value: object) -> object:
    """`"25%"` (a whole percent, 1-100) or a whole number of instances (at least 1); kept as written."""
    wanted = 'a percentage like "25%" or a whole number of instances'
    if isinstance(value, bool) or not isinstance(value, int | str):
        got = str(value).lower() if isinstance(value, bool) else type(value).__name__
        raise ValueError(f"expected {wanted}, got {got}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"must be at least 1 instance, got {value}")
        return value
    match = _PERCENT.fullmatch(value)
    if match is None:
        raise ValueError(f"{show(value)} is not {wanted}")
    if not 1 <= int(match.group(1)) <= 100:
        raise ValueError(f"{show(value)} must be between 1% and 100%")
    return f"{int(match.group(1))}%"


_SHARE_SCHEMA = {"oneOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": r"^\d{1,3}%$"}]}

HostName = Annotated[str, AfterValidator(_host_name), WithJsonSchema(
    {"type": "string", "pattern": f"^{_HOST_NAME.pattern}$", "maxLength": 63})]
Address = Annotated[str, AfterValidator(_address)]
_LABEL_SCHEMA = WithJsonSchema({"type": "string", "pattern": f"^{_LABEL_TEXT.pattern}$", "maxLength": 63})
LabelName = Annotated[str, _label_text("name"), _LABEL_SCHEMA]
LabelValue = Annotated[str, _label_text("value"), _LABEL_SCHEMA]
Share = Annotated[int | str, BeforeValidator(_share), WithJsonSchema(_SHARE_SCHEMA)]
"""A part of the target: `"25%"` (of the target, rounded up, at least 1) or a number of instances."""


def share_of(share: int | str, target: int) -> int:
    """How many instances `share` is out of `target`: a percentage rounded up (never 0 when
    target > 0), a number as given but at most target."""
    if isinstance(share, int):
        return min(share, target)
    percent = int(share.rstrip("%"))
    return min(target, max(1, -(-percent * target // 100))) if target > 0 else 0


# -- sections -------------------------------------------------------------------------------------

class HostSpec(SpecModel):
    """One host of the inventory."""

    name: HostName
    address: Address
    labels: dict[LabelName, LabelValue] = Field(default_factory=dict)


def _unique_hosts(hosts: list[HostSpec]) -> list[HostSpec]:
    names: dict[str, int] = {}
    addresses: dict[str, int] = {}
    for i, host in enumerate(hosts):
        if host.name in names:
            raise ItemProblem(f"{show(host.name)} is the name of host [{names[host.name]}] too; every host "
                              "needs its own name", i, "name")
        names[host.name] = i
        key = canonical_address(host.address)
        if key in addresses:
            raise ItemProblem(f"{show(host.address)} is the address of host [{addresses[key]}] too; two "
                              "entries would be one machine", i, "address")
        addresses[key] = i
    return hosts


Hosts = Annotated[list[HostSpec], Field(min_length=1, max_length=MAX_HOSTS), AfterValidator(_unique_hosts)]

_SECRET_KEYS = ("password", "passphrase")


class SshSpec(SpecModel):
    """How shipyard logs in to every host: a key, never a password, and host keys checked."""

    user: Text
    identity: Text
    """Private key file (relative to the spec file, or ~/...)."""
    port: Annotated[int, Strict(), Field(ge=1, le=65535)] = 22
    known_hosts: Text = "~/.ssh/known_hosts"
    """Host keys are checked against this file; an unknown or changed key is refused."""
    trust_new_hosts: Bool = False
    """true: a host not yet in known_hosts is trusted on first contact, its key added (and audited).
    A changed key is refused either way."""

    @field_validator("identity")
    @classmethod
    def _private_key(cls, value: str) -> str:
        if value.endswith(".pub"):
            raise ValueError(f"{show(value)} is a public key: identity is the private key file "
                             f"({value.removesuffix('.pub')}); its .pub goes into authorized_keys on the hosts")
        return value

    @model_validator(mode="before")
    @classmethod
    def _keys_only(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in _SECRET_KEYS:
                if key in data:
                    raise ValueError(f"{key}: shipyard logs in with SSH keys only, never a password; remove "
                                     f"{key} and give identity (a private key file whose public key is in "
                                     "the user's authorized_keys on every host)")
        return data


class PlacementSpec(SpecModel):
    """Where instances go: `per_host: N` on every host, or `total: N` spread evenly across the
    values of a label (then across hosts), with an optional cap per host."""

    per_host: Annotated[int, Strict(), Field(ge=1, le=64)] | None = None
    total: Annotated[int, Strict(), Field(ge=1, le=10_000)] | None = None
    spread: LabelName | None = None
    """With total: the label (e.g. zone) whose values share the instances evenly."""
    max_per_host: Annotated[int, Strict(), Field(ge=1, le=64)] | None = None
    """With total: no host runs more than this many."""

    @model_validator(mode="after")
    def _one_form(self) -> PlacementSpec:
        exactly_one(self, ("per_host", "total"))
        if self.per_host is not None:
            for key in ("spread", "max_per_host"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} goes with total, not with per_host (per_host already puts "
                                     "the same number on every host)")
        return self


class BatchSpec(SpecModel):
    """How new instances start across hosts: at most max_parallel at once, and how many of the
    target must be healthy before traffic moves."""

    max_parallel: Share = "25%"
    min_healthy: Share = "100%"


class FleetSpec(SpecModel):
    """The `fleet:` section: run the service on several hosts over SSH. `placement` says where
    instances go (it replaces replicas), `batch` how a release starts across the hosts, and
    `lost_after` when a silent host's instances are replaced on the others.

    `hosts_file` is read when the spec file is loaded and its hosts are kept in `hosts` (so a
    stored spec does not depend on the file later); `hosts_file` then says where they came from."""

    hosts: Hosts | None = None
    hosts_file: Text | None = None
    ssh: SshSpec
    placement: PlacementSpec = Field(default_factory=lambda: PlacementSpec(per_host=1))
    batch: BatchSpec = Field(default_factory=BatchSpec)
    lost_after: PositiveDuration = 30.0

    @field_validator("lost_after")
    @classmethod
    def _lost_after(cls, value: float) -> float:
        if value < MIN_LOST_AFTER:
            raise ValueError(f"{format_duration(value)} is too short: at least {format_duration(MIN_LOST_AFTER)}, "
                             "or a host would be lost (and its instances replaced) on one slow answer")
        return value

    @model_validator(mode="after")
    def _fits(self, info: ValidationInfo) -> FleetSpec:
        if self.hosts is None:
            if info.context and info.context.get(INVENTORY_FAILED):
                return self
            if self.hosts_file is not None:
                raise ValueError("hosts_file is read when a spec file is loaded; a spec given as data "
                                 "must carry its hosts")
            raise ValueError("give one of hosts or hosts_file")
        self._check_placement(self.hosts)
        target = self.target(len(self.hosts))
        if isinstance(self.batch.min_healthy, int) and self.batch.min_healthy > target:
            raise ItemProblem(f"{self.batch.min_healthy} is more than the {target} instance(s) placement asks "
                              "for: lower it, or write a percentage", "batch", "min_healthy")
        return self

    def _check_placement(self, hosts: list[HostSpec]) -> None:
        p = self.placement
        if p.spread is not None:
            missing = [h.name for h in hosts if p.spread not in h.labels]
            if missing:
                raise ItemProblem(f"label {show(p.spread)} is missing on host(s) "
                                  f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}: give it "
                                  "to every host, or spread by another label", "placement", "spread")
        if p.total is not None and p.max_per_host is not None and p.total > p.max_per_host * len(hosts):
            raise ItemProblem(f"{p.total} does not fit: {len(hosts)} host(s) take at most {p.max_per_host} "
                              f"each ({p.max_per_host * len(hosts)}); lower total, raise max_per_host or add "
                              "hosts", "placement", "total")

    def target(self, usable_hosts: int) -> int:
        """How many instances placement asks for when `usable_hosts` hosts can take them."""
        if self.placement.per_host is not None:
            return self.placement.per_host * usable_hosts
        assert self.placement.total is not None
        return self.placement.total
