"""The HAProxy data plane: a real HAProxy 2.6 (master-worker) behind the Router port, whose
traffic changes only through its Runtime API (maps, add/del server); its configuration, Runtime
API client, process and per-request logs (see adapter.py)."""
