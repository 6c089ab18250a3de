"""The families /metrics is made of: the routers' traffic counters, and what the daemon knows."""
