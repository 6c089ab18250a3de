"""The SSH Runtime adapter's transport: one persistent, multiplexed asyncssh connection per
fleet host, host keys checked against known_hosts, reconnected with backoff after a drop."""
