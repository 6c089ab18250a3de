"""Metric providers: fetch series or numbers from outside (I/O); the judges stay pure."""
