"""Traffic: the routing table, the embedded data plane, its control socket, per-track metrics."""
