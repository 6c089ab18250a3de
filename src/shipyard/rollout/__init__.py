"""Deciding, purely: the rollout as data, the blue-green and canary machines, table derivation and plan.

No asyncio, sockets, SQL or subprocesses here; engine/ carries the decisions out.
"""
