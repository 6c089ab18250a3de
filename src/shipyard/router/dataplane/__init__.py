"""The router process (data plane): imports only router/table.py, router/wire.py, errors and histogram, so it runs alone."""
