"""HAProxy as a data plane: its configuration, Runtime API, process and per-request logs."""
