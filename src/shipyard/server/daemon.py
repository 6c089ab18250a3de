"""`shipyard serve`: wire the concrete adapters together (the only place that does) and
run the controller and the API until SIGTERM / SIGINT. Instances and routers are left
running on exit: the next daemon re-adopts them."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
import socket
import sys
from pathlib import Path

import uvicorn

from shipyard.analysis.providers import prometheus
from shipyard.engine.controller import Controller
from shipyard.engine.deps import Deps
from shipyard.engine.host_keys import KeyTrustAudit
from shipyard.engine.ports import SystemClock
from shipyard.errors import ShipyardError
from shipyard.fsutil import write_atomic
from shipyard.images import ImageStore
from shipyard.notify import Dispatcher
from shipyard.paths import StatePaths
from shipyard.router.by_kind import RouterByKind
from shipyard.router.embedded import EmbeddedRouter
from shipyard.router.haproxy.adapter import HAProxyRouter
from shipyard.runtime.by_host import ByHostRuntime
from shipyard.runtime.health import HttpHealthProbe
from shipyard.runtime.local import LocalRuntime
from shipyard.runtime.ssh.drift_scan import SshDriftScan
from shipyard.runtime.ssh.fleet import SshFleet
from shipyard.runtime.ssh.host_report import SshHostReports
from shipyard.runtime.ssh.runtime import SshRuntime
from shipyard.server.api import HostPolicy, create_app
from shipyard.server.daemon_log import QuietStreamHandler, ResilientFileHandler
from shipyard.server.listen_policy import check_listen
from shipyard.server.state_files import lock_down
from shipyard.state.sqlite import SqliteStore

log = logging.getLogger("shipyard.daemon")


def ensure_token(paths: StatePaths) -> str:
    """The API token, created on first start, readable only by the owner."""
    try:
        fd = os.open(paths.token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return paths.token.read_text().strip()
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def take_lock(paths: StatePaths) -> int:
    fd = os.open(paths.root / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        pid = ""
        with contextlib.suppress(OSError, ValueError):
            pid = f" (pid {json.loads(paths.api.read_text())['pid']})"
        raise ShipyardError(f"another shipyard daemon is already running for {paths.root}{pid}",
                            "stop it first, or use another --state-dir") from None
    return fd


def bind(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except (OSError, ValueError) as e:
        sock.close()
        raise ShipyardError(f"the API cannot listen on {listen}: {e}",
                            "choose another address with --listen (port 0 picks a free one)") from None
    sock.listen(128)
    return sock


def write_api_file(paths: StatePaths, url: str) -> None:
    write_atomic(paths.api, json.dumps({"url": url, "pid": os.getpid()}), mode=0o600)


def setup_logging(path: Path) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for h in (ResilientFileHandler(str(path)), QuietStreamHandler(sys.stderr)):   # a full disk: no log storm
        h.setFormatter(fmt)
        root.addHandler(h)


def routers(paths: StatePaths) -> RouterByKind:
    """Each service on the data plane its spec's `router.kind` names; HAProxy is started only
    for the first service that asks for it."""
    return RouterByKind({"embedded": EmbeddedRouter(paths), "haproxy": HAProxyRouter(paths.routers / "haproxy")},
                        paths.routers / "kinds.json")


async def serve(paths: StatePaths, listen: str = "127.0.0.1:0", api_hosts: tuple[str, ...] = (),
                insecure_listen: bool = False) -> None:
    check_listen(listen, insecure_listen)
    paths.ensure()
    lock_down(paths)
    lock_fd = take_lock(paths)
    setup_logging(paths.daemon_log)
    token = ensure_token(paths)
    store = SqliteStore(paths.db)
    images = ImageStore(paths.images)
    scanner = SshDriftScan(None)      # fleet drift scans, on the hosts' connections that SshFleet opens
    trust = KeyTrustAudit(store.audit)   # host.key_trusted, for the runtime's connections and the reports' alike
    fleet = SshFleet(SshRuntime(None, images), on_trust=trust, drift=scanner)
    deps = Deps(store=store, images=images, runtime=ByHostRuntime(LocalRuntime(), fleet.runtime), fleet=fleet,
                fleet_drift=scanner,
                router=routers(paths), paths=paths, health=HttpHealthProbe(), clock=SystemClock(),
                query_metric=prometheus.judge, host_reports=SshHostReports(images, on_trust=trust),
                preview_secret=token)
    notifications = Dispatcher(store, deps.env)
    deps.on_event = notifications.offer
    controller = Controller(deps)
    sock = bind(listen)
    host, port = sock.getsockname()[:2]
    server: uvicorn.Server | None = None

    def request_exit() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(controller, token, on_shutdown=request_exit, hosts=HostPolicy.of(port, api_hosts))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    try:
        notifications.start()
        await controller.start()
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        write_api_file(paths, url)
        log.info("shipyard daemon listening on %s (state %s); dashboard %s/dashboard/, metrics %s/metrics",
                 url, paths.root, url, url)
        await server.serve(sockets=[sock])
    finally:
        with contextlib.suppress(FileNotFoundError):
            paths.api.unlink()
        await controller.close()
        await fleet.close()
        await notifications.close()
        store.close()
        sock.close()
        os.close(lock_fd)


def run(state_dir: str | None, listen: str, api_hosts: tuple[str, ...] = (), insecure_listen: bool = False) -> None:
    paths = StatePaths.resolve(state_dir)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(paths, listen, api_hosts, insecure_listen))
    else:
        uvloop.run(serve(paths, listen, api_hosts, insecure_listen))
