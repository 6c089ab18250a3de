"""A response the router gives itself to a request pipelined behind others still in progress
(an unknown host's 404): it waits its turn in the connection's queue like an Exchange, so
the answers go out in the order of the requests and the connection serves on after it."""

from __future__ import annotations

from typing import Protocol


class Client(Protocol):
    """What an Answer needs from its client connection (client.ClientConnection)."""

    def send(self, data: bytes) -> None: ...

    def exchange_done(self, ex: Answer) -> None: ...


class Answer:
    """Stands in for an Exchange in ClientConnection's `active` / `queue` / `reading`. The
    request's body (of a known, small length: the caller checks) is read and dropped; the
    response is written once the requests before it are answered and its body has been read."""

    __slots__ = ("client", "response", "started", "complete")

    conn = None
    """No instance: nothing for the client's deadlines or back-pressure to look at."""
    close_after = False

    def __init__(self, client: Client, response: bytes) -> None:
        self.client = client
        self.response = response
        self.started = False
        self.complete = False

    def start(self) -> None:
        """Its turn: the requests before it are answered."""
        self.started = True
        if self.complete:
            self._answer()

    def request_body(self, data: bytes) -> None:
        """Dropped: the request goes nowhere."""

    def request_complete(self) -> None:
        self.complete = True
        if self.started:
            self._answer()

    def abort(self) -> None:
        """The client connection is gone: nothing to release."""

    def _answer(self) -> None:
        self.client.send(self.response)
        self.client.exchange_done(self)
