"""Stand-ins for the daemon that answer the CLI with fixed bytes and record what it sent:
for the answers a real daemon never gives (malformed, hostile) and for proving that
nothing was sent at all."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path


class OneShotDaemon:
    """Accepts connections on loopback, records each request, answers with `reply`."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
                    data += chunk
                self.requests.append(data)
                if self.reply:
                    conn.sendall(self.reply)

    def state_dir(self, root: Path) -> Path:
        root.mkdir(exist_ok=True)
        (root / "api.json").write_text(json.dumps({"url": f"http://127.0.0.1:{self.port}", "pid": 1}))
        (root / "token").write_text("t0ken\n")
        return root

    def close(self) -> None:
        self.sock.close()
