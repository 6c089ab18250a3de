"""The routers' per-track counters as Prometheus families: requests by status class,
the latency histogram in the router's own bucket bounds, the traffic split, per-instance
counters. A track's counters are labelled with the release the router counted them for
(it starts them again when the track's release changes); the weights, which are the
record's, with the release the record gives the slot."""

from __future__ import annotations

from typing import Any

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from shipyard.rollout.records import BASELINE_MAX_WEIGHT, BASELINE_SLOT, ServiceRecord

TRACK_LABELS = ["service", "track", "release"]
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def short(image_id: str | None) -> str:
    return image_id[:12] if image_id else ""


def traffic_families(services: list[ServiceRecord], stats: list[dict[str, Any] | None]) -> list[Metric]:
    up = GaugeMetricFamily("shipyard_router_up", "1 when the service's router answered this scrape, else 0",
                           labels=["service"])
    requests = CounterMetricFamily("shipyard_requests", "Responses the router completed, by status class",
                                   labels=[*TRACK_LABELS, "status_class"])
    router_errors = CounterMetricFamily(
        "shipyard_router_errors", "Responses the router made itself (502/503/504) or cut short; also in 5xx",
        labels=TRACK_LABELS)
    aborted = CounterMetricFamily("shipyard_requests_aborted",
                                  "Requests whose client left before the response was complete", labels=TRACK_LABELS)
    inflight = GaugeMetricFamily("shipyard_requests_in_flight", "Requests being served now", labels=TRACK_LABELS)
    queued = GaugeMetricFamily("shipyard_requests_queued",
                               "Requests waiting now for an instance below max_conns_per_instance (also in flight)",
                               labels=TRACK_LABELS)
    queue_timeouts = CounterMetricFamily("shipyard_queue_timeouts",
                                         "Requests answered 503 after waiting queue_timeout for an instance",
                                         labels=TRACK_LABELS)
    queue_full = CounterMetricFamily("shipyard_queue_full",
                                     "Requests answered 503 at once because the track's queue held queue_size",
                                     labels=TRACK_LABELS)
    latency = HistogramMetricFamily("shipyard_request_duration_seconds",
                                    "Request head received to response sent, as the router saw it",
                                    labels=TRACK_LABELS)
    weight = GaugeMetricFamily("shipyard_track_weight_percent", "Percent of users the routing table sends to the track",
                               labels=TRACK_LABELS)
    upstream_requests = CounterMetricFamily("shipyard_upstream_requests", "Requests the router sent to one instance",
                                            labels=["service", "track", "instance"])
    connect_failures = CounterMetricFamily("shipyard_upstream_connect_failures",
                                           "Failed connects from the router to one instance",
                                           labels=["service", "track", "instance"])
    ejected = GaugeMetricFamily("shipyard_upstream_ejected", "1 while the router keeps an instance out of rotation",
                                labels=["service", "track", "instance"])
    unknown_host = CounterMetricFamily(
        "shipyard_unknown_host_requests",
        "Requests answered 404 on a listen address shared by domains because no service there names their host",
        labels=["listen"])
    listens: set[str] = set()
    for svc, st in zip(services, stats, strict=True):
        up.add_metric([svc.name], 0 if st is None else 1)
        for track, share in track_weights(svc).items():
            weight.add_metric([svc.name, track, _release(svc, track)], share)
        if st is None:
            continue
        for track, m in sorted(st.get("tracks", {}).items()):
            labels = [svc.name, track, short(m.get("release")) or _release(svc, track)]
            for cls in STATUS_CLASSES:
                requests.add_metric([*labels, cls], m["status"].get(cls, 0))
            router_errors.add_metric(labels, m.get("errors", 0))
            aborted.add_metric(labels, m.get("aborted", 0))
            inflight.add_metric(labels, m.get("inflight", 0))
            queued.add_metric(labels, m.get("queued", 0))
            queue_timeouts.add_metric(labels, m.get("queue_timeouts", 0))
            queue_full.add_metric(labels, m.get("queue_full", 0))
            lat = m["latency"]
            latency.add_metric(labels, buckets=cumulative_buckets(lat["buckets"], lat["counts"]),
                               sum_value=lat["sum_ms"] / 1000)
        listener = st.get("listener")
        if listener and "unknown_host" in listener and listener.get("listen") not in listens:
            listens.add(listener["listen"])     # one series per address, however many services share it
            unknown_host.add_metric([listener["listen"]], listener["unknown_host"]["requests"])
        for instance, u in sorted(st.get("upstreams", {}).items()):
            labels = [svc.name, u["track"], instance]
            upstream_requests.add_metric(labels, u["requests"])
            connect_failures.add_metric(labels, u["connect_failures"])
            ejected.add_metric(labels, 1 if u["ejected"] else 0)
    return [up, requests, router_errors, aborted, inflight, queued, queue_timeouts, queue_full, latency, weight,
            upstream_requests, connect_failures, ejected, unknown_host]


def cumulative_buckets(bounds_ms: list[Any], counts: list[int]) -> list[tuple[str, float]]:
    """The router's per-bucket counts (bounds in ms, the last one "+inf") as Prometheus'
    cumulative `le` buckets in seconds; the +Inf bucket is the total count."""
    if len(bounds_ms) != len(counts) or not bounds_ms:
        raise ValueError(f"{len(bounds_ms)} latency bounds for {len(counts)} counts")
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(bounds_ms, counts, strict=True):
        running += count
        le = "+Inf" if isinstance(bound, str) else repr(float(bound) / 1000)
        out.append((le, running))
    if out[-1][0] != "+Inf":
        raise ValueError("the router's last latency bucket must be +inf")
    return out


def track_weights(svc: ServiceRecord) -> dict[str, float]:
    """What the routing table built from this record gives each slot (see rollout/traffic.py)."""
    live = svc.active_slot
    if not live:
        return {}
    canary = svc.canary_slot
    share = min(100.0, max(0.0, svc.slots[canary].weight)) if canary else 0.0
    out = {live: round(100.0 - share, 2)}
    if canary:
        out[canary] = share
        if svc.baseline is not None and 0 < share <= BASELINE_MAX_WEIGHT:    # as many users as the canary
            out[BASELINE_SLOT] = share
            out[live] = round(100.0 - 2 * share, 2)
    return out


def _release(svc: ServiceRecord, track: str) -> str:
    slot = svc.slots.get(track)
    return short(slot.image_id) if slot is not None else ""
