"""The HTTP API the CLI (and the dashboard) talks to, one module per resource. Every
route but /v1/ping and /metrics needs the bearer token from the state directory (auth.py).
ShipyardErrors become JSON bodies {"error", "hint", "kind"} with a status that says what
kind of failure it was (common.py). Every change asked for here goes into the audit log
with its actor, and so does every request with a wrong token."""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware

from shipyard.engine.controller import Controller
from shipyard.server.api import (
    checklist,
    database,
    drift,
    fleet_hosts,
    history,
    images,
    rollouts,
    services,
    system,
)
from shipyard.server.api.auth import ACTOR_HEADER, claimed_actor
from shipyard.server.api.common import EXIT_HEADER, Api, error_response, wants_text
from shipyard.server.api.hosts import HostGuard, HostPolicy
from shipyard.server.dashboard.routes import dashboard_routes

__all__ = ["ACTOR_HEADER", "EXIT_HEADER", "HostPolicy", "claimed_actor", "create_app", "error_response", "wants_text"]

ENDPOINTS = [
    system.ping, services.services, services.service, services.remove, history.history, rollouts.deploy,
    database.db_check, database.db_contract, rollouts.promote, rollouts.pause, rollouts.resume, rollouts.abort,
    rollouts.retry, rollouts.rollback, rollouts.rollout, services.events, services.logs, images.images,
    system.shutdown, rollouts.plan, history.audit, drift.drift_last, drift.drift_scan, system.metrics,
    checklist.checklist_one, checklist.checklist_all, fleet_hosts.hosts_list, fleet_hosts.hosts_check,
    fleet_hosts.host_state, fleet_hosts.host_drain, fleet_hosts.host_undrain, fleet_hosts.host_remove,
]


def create_app(controller: Controller, token: str, on_shutdown: Callable[[], None] | None = None,
               hosts: HostPolicy | None = None) -> Starlette:
    """`hosts`: which Host headers are answered (default: loopback names on any port)."""
    api = Api(controller, token, on_shutdown)
    return Starlette(routes=[e.bind(api) for e in ENDPOINTS] + dashboard_routes(controller),
                     middleware=[Middleware(HostGuard, policy=hosts or HostPolicy())])
