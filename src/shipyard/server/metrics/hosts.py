"""Fleet hosts as Prometheus families, from engine/fleet_hosts.FleetHosts.summary (the store
and the runtime's status cache: a scrape never opens an SSH connection)."""

from __future__ import annotations

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from shipyard.engine.queries import Queries

HOST_STATES = ("up", "unreachable", "lost", "draining", "removed")


def host_families(store: Queries) -> list[Metric]:
    up = GaugeMetricFamily("shipyard_fleet_host_up",
                           "1 when the fleet host answers and takes instances, else 0 (see shipyard_fleet_host_state)",
                           labels=["host", "address"])
    state = GaugeMetricFamily("shipyard_fleet_host_state",
                              "1 for the fleet host's current state: up, unreachable (silent, not yet lost), lost, "
                              "draining, removed", labels=["host", "address", "state"])
    silent = GaugeMetricFamily("shipyard_fleet_host_silent_seconds",
                               "Seconds since the fleet host last answered the runtime (0 while it answers)",
                               labels=["host", "address"])
    instances = GaugeMetricFamily("shipyard_fleet_host_instances",
                                  "Instances of the service on the fleet host (starting or healthy, as the store "
                                  "has them)", labels=["host", "address", "service"])
    for row in store.hosts.summary():
        host, address = row["name"], row["address"]
        up.add_metric([host, address], 1 if row["state"] == "up" else 0)
        for s in HOST_STATES:
            state.add_metric([host, address, s], 1 if row["state"] == s else 0)
        silent.add_metric([host, address], row["silent_seconds"] or 0.0)
        for service in row["services"]:
            instances.add_metric([host, address, service], row["instances"].get(service, 0))
    return [up, state, silent, instances]
