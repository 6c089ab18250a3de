"""Fleet hosts an operator took out of placement (`shipyard hosts drain` / `remove`), kept in
the daemon's store beside the services they affect: a restarted daemon must not place
instances on a host it was told to empty. The spec is not the place (it is the user's file,
and a removed host stays listed there until the next deploy drops it), nor a file of its own
(the store is what every daemon sharing the state reads)."""

from __future__ import annotations

import sqlite3
import time

SCHEMA = """
CREATE TABLE IF NOT EXISTS host_states (address TEXT PRIMARY KEY, state TEXT NOT NULL, since REAL NOT NULL);
"""


class HostStates:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.db.executescript(SCHEMA)

    def put(self, address: str, state: str | None) -> None:
        if state is None:
            self.db.execute("DELETE FROM host_states WHERE address=?", (address,))
            return
        self.db.execute("INSERT INTO host_states(address, state, since) VALUES (?,?,?) ON CONFLICT(address) "
                        "DO UPDATE SET state=excluded.state, since=excluded.since", (address, state, time.time()))

    def all(self) -> dict[str, str]:
        return {r[0]: r[1] for r in self.db.execute("SELECT address, state FROM host_states ORDER BY address")}
