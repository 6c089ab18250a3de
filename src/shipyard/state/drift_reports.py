"""The last drift report of each service, in the daemon's store: what `shipyard drift`,
the API and the checklist read without scanning again."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS drift (
  service TEXT PRIMARY KEY, mode TEXT NOT NULL, clean INTEGER NOT NULL, data TEXT NOT NULL,
  scanned_at REAL NOT NULL, full_at REAL);
"""


class DriftReports:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.db.executescript(SCHEMA)

    def put(self, service: str, report: dict[str, Any]) -> None:
        full_at = report["scanned_at"] if report.get("mode") == "full" else None
        self.db.execute(
            "INSERT INTO drift(service, mode, clean, data, scanned_at, full_at) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT(service) DO UPDATE SET mode=excluded.mode, clean=excluded.clean, data=excluded.data, "
            "scanned_at=excluded.scanned_at, full_at=COALESCE(excluded.full_at, drift.full_at)",
            (service, report.get("mode", "metadata"), int(bool(report.get("clean"))), json.dumps(report),
             float(report.get("scanned_at") or time.time()), full_at))

    def get(self, service: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT data, full_at FROM drift WHERE service=?", (service,)).fetchone()
        if row is None:
            return None
        doc: dict[str, Any] = json.loads(row[0])
        doc["last_full_at"] = row[1]
        return doc

    def remove(self, service: str) -> None:
        self.db.execute("DELETE FROM drift WHERE service=?", (service,))
