"""Persistence: services, instances, rollouts and the event log (SQLite in WAL mode)."""
