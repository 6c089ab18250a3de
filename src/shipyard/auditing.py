"""The audit log's vocabulary that is not storage: who the daemon is, who an unknown caller
is, and how often a rejected token is worth an entry. Pure, so the API can use it without
importing the SQLite audit adapter."""

from __future__ import annotations

DAEMON_ACTOR = "shipyard-daemon"
UNKNOWN_ACTOR = "unknown"


class RejectionThrottle:
    """At most one `token.rejected` entry per client address per window, so a flood of bad
    requests cannot fill the disk; the entry that gets through counts the ones that did not."""

    def __init__(self, window: float = 10.0, max_addresses: int = 10_000) -> None:
        self.window = window
        self.max_addresses = max_addresses
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def admit(self, address: str, now: float) -> int | None:
        """None: do not record. Else how many rejections from `address` went unrecorded since then."""
        last = self._last.get(address)
        if last is not None and now - last < self.window:
            self._suppressed[address] = self._suppressed.get(address, 0) + 1
            return None
        if last is None and len(self._last) >= self.max_addresses:
            for a in [a for a, t in self._last.items() if now - t >= self.window]:
                self._last.pop(a, None)
                self._suppressed.pop(a, None)
            if len(self._last) >= self.max_addresses:   # still full: a flood from many addresses
                return None
        self._last[address] = now
        return self._suppressed.pop(address, 0)
