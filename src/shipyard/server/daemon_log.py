"""The daemon's log handlers, made for a state directory that can fill up.

daemon.log lives in the state directory; when that disk is full, logging's stock
handlers print "--- Logging error ---" and a traceback to stderr for every line, which
is itself on the full disk more often than not. Here a line that cannot be written is
kept (the last `BACKLOG` of them) and written, after one note saying how many were
held, as soon as a write succeeds again; stderr's handler says nothing about its own
failures (there is nowhere left to say it)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections import deque

BACKLOG = 500
"""Lines kept in memory while the log file cannot be written (the oldest go first)."""


class ResilientFileHandler(logging.FileHandler):
    def __init__(self, filename: str, backlog: int = BACKLOG) -> None:
        super().__init__(filename, delay=True)
        self.held: deque[str] = deque(maxlen=backlog)
        self.lost = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        if self.held and not self._write("".join(self._backlog())):
            self._hold(line)
            return
        if not self._write(line):
            self._hold(line)

    def _backlog(self) -> list[str]:
        lines = list(self.held)
        note = f"--- {len(lines) + self.lost} log line(s) were held while {self.baseFilename} could not be written"
        note += f" ({self.lost} of them lost) ---\n" if self.lost else " ---\n"
        return [note, *lines]

    def _hold(self, line: str) -> None:
        if len(self.held) == self.held.maxlen:
            self.lost += 1
        self.held.append(line)

    def _write(self, text: str) -> bool:
        try:
            if self.stream is None:
                self.stream = self._open()
            self.stream.write(text)
            self.stream.flush()
        except OSError:
            self._drop_stream()
            return False
        self.held.clear()
        self.lost = 0
        return True

    def _drop_stream(self) -> None:
        """Reopen next time: a stream whose flush failed keeps half a line in its buffer."""
        stream, self.stream = self.stream, None
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


class QuietStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr: a line it cannot write is dropped without a word."""

    def handleError(self, record: logging.LogRecord) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handleError(record)
