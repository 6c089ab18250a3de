"""Who may share a `listen` address: several services, when each names its `domains`.

The router picks a service by Host (and its certificate by SNI), so an address can carry
several services only if every one of them names its hosts and no name is claimed twice;
they must also be served by the same data plane (`router.kind`, as many `router.workers`) and
agree on what the listener is (TLS or plain, the same plain-HTTP redirect). `clash` is a pure function over
the specs, checked before a deploy records or starts anything; `served_spec` is which
stored spec counts for a service (the last one deployed, whose domains the router serves)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from shipyard.engine.ports import Store
from shipyard.errors import ConflictError, ShipyardError
from shipyard.rollout.records import ServiceRecord
from shipyard.spec import Spec
from shipyard.spec.domains import overlapping
from shipyard.spec.values import split_listen


def same_address(a: str, b: str) -> bool:
    """Whether two `listen` values name the same address (127.0.0.1:08080 is 127.0.0.1:8080)."""
    try:
        return split_listen(a) == split_listen(b)
    except ValueError:
        return a == b


def clash(spec: Spec, others: Iterable[Spec]) -> ConflictError | None:
    """Why `spec` cannot be served beside the stored specs of the other services (None: it can).
    Only services on the same address matter; `others` may hold any."""
    for other in others:
        if other.service == spec.service or not same_address(other.listen, spec.listen):
            continue
        where = f"{spec.listen} is already the listen address of service {other.service}"
        if not other.domains:
            return ConflictError(f"{where}, which names no domains (it takes every Host there)",
                                 f"give {spec.service} its own `listen`, or name `domains:` in both specs "
                                 f"and deploy {other.service} again first")
        if not spec.domains:
            return ConflictError(f"{where} (domains {', '.join(other.domains)}), and this spec names no "
                                 "domains", f"name the hosts {spec.service} answers in `domains:`, or give it "
                                            "its own `listen`")
        if other.router.kind != spec.router.kind:
            return ConflictError(f"{where}, served by router kind {other.router.kind}; this spec asks for "
                                 f"{spec.router.kind}", "one address is served by one data plane: use the same "
                                                        f"router.kind as {other.service}, or another `listen`")
        if other.router.workers != spec.router.workers:
            return ConflictError(f"{where}, served by {other.router.workers} router worker(s); this spec asks "
                                 f"for {spec.router.workers}", "one address is served by one set of router "
                                 f"processes: give router.workers: {other.router.workers} as {other.service} "
                                 "does (or change both), or use another `listen`")
        if (other.tls is None) != (spec.tls is None):
            with_tls, without = (other, spec) if other.tls is not None else (spec, other)
            return ConflictError(f"{where}: {with_tls.service} terminates TLS there and {without.service} does not",
                                 "services sharing an address must all have `tls` (each its own certificate, "
                                 "chosen by SNI) or none")
        mine = spec.tls.redirect_http if spec.tls else None
        theirs = other.tls.redirect_http if other.tls else None
        if mine != theirs:
            return ConflictError(f"{where}, whose tls.redirect_http is {theirs or 'not set'}; this spec says "
                                 f"{mine or 'none'}", "services sharing an address share its plain-HTTP "
                                                      f"redirect: give tls.redirect_http: {theirs or '(none)'}")
        both = overlapping(spec.domains, other.domains)
        if both:
            names = ", ".join(both)
            return ConflictError(f"{names} {'is' if len(both) == 1 else 'are'} already routed to service "
                                 f"{other.service} on {spec.listen}",
                                 f"a name belongs to one service per address: remove {names} from the spec of "
                                 f"{spec.service} or of {other.service}")
    return None


def served_spec(svc: ServiceRecord, last_rollout_spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """The stored spec whose domains `svc`'s router serves: that of its last rollout (each
    deploy, rollback or retry tells the router its spec's domains as it begins), else the live slot's."""
    if last_rollout_spec is not None:
        return last_rollout_spec
    live = svc.live
    return live.spec if live is not None and live.spec else None


def stored_spec(store: Store, svc: ServiceRecord) -> Spec | None:
    """`served_spec` of `svc` as a Spec (None: none recorded, or no longer valid)."""
    from shipyard.engine.actions import spec_from_doc  # actions imports this module's users

    last = next(iter(store.rollouts(svc.name, 1)), None)
    doc = served_spec(svc, store.rollout_spec(last.id) if last is not None else None)
    if doc is None:
        return None
    try:
        return spec_from_doc(doc, svc.spec_path)
    except ShipyardError:
        return None


def served_domains(store: Store, svc: ServiceRecord) -> tuple[str, ...]:
    """The domains the router is told for `svc` when it repairs or re-adopts it."""
    spec = stored_spec(store, svc)
    return tuple(spec.domains or ()) if spec is not None else ()


def refuse_clash(store: Store, spec: Spec) -> None:
    """ConflictError if `spec` cannot share its address with the services stored (nothing changes)."""
    others = []
    for svc in store.list_services():
        if svc.name == spec.service or not same_address(svc.listen, spec.listen):
            continue
        other = stored_spec(store, svc)
        if other is None:     # nothing says which hosts it takes: it takes them all
            raise ConflictError(f"{spec.listen} is already the listen address of service {svc.name}",
                                "give each service its own `listen` address")
        others.append(other)
    problem = clash(spec, others)
    if problem is not None:
        raise problem
