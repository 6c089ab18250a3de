"""The embedded data plane's process: an HTTP/1.1 reverse proxy serving every service on one
listen address (the address itself: proxy_server.py).

Run as its own process (`python -m shipyard.router.dataplane.proxy --listen 127.0.0.1:8080
--control S --services F`) so it keeps serving its last tables when the daemon dies. It is
built on asyncio Protocols + httptools (uvloop when present) because every request crosses
it: no per-request task, no timer per request (one sweeper checks deadlines), no copy of
bodies beyond one chunk. The daemon drives it over the control socket (control_server.py,
control_hosts.py); `--redirect` adds a plain-HTTP listener answering 308 to https
(redirect.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from shipyard.errors import RouterError
from shipyard.router.dataplane.acceptor import bind
from shipyard.router.dataplane.control_hosts import ListenControl, load_services, save_services
from shipyard.router.dataplane.control_server import claim_socket, load_table, remove_socket, serve_control
from shipyard.router.dataplane.proxy_server import DRAIN_TIMEOUT, ProxyServer, parse_listen
from shipyard.router.table import TableError

log = logging.getLogger("shipyard.router")


def open_planes(server: ProxyServer, services_path: Path) -> None:
    """Serve every service the services file names, each with its persisted table. A table
    whose certificate cannot be served stops the start when it is the only service (the
    daemon sees why); beside others it is left out (its service answers 503 until the
    daemon pushes a table that can be served), so one bad file never takes the others down."""
    entries = load_services(services_path)
    for service, entry in entries.items():
        table = load_table(Path(entry["table"]), service)
        try:
            server.add(service, entry["domains"], table)
        except TableError:
            if len(entries) == 1:
                raise
            log.exception("the table of %s cannot be served; starting it without one", service)
            server.add(service, entry["domains"], None)
        except ValueError as e:
            log.error("not serving %s from %s: %s", service, services_path, e)


async def run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    try:
        host, port = parse_listen(args.listen)
    except ValueError as e:
        print(str(e), file=sys.stderr)
        return 2
    control_path = os.path.abspath(args.control)
    if args.services:
        services_path = Path(args.services)
    elif args.service and args.table:   # one service, as before shared addresses: its list beside its table
        services_path = Path(args.table + ".services.json")
        if not load_services(services_path):
            save_services(services_path, {args.service: {"domains": [], "table": os.path.abspath(args.table)}})
    else:
        print("give --services FILE (or --service NAME with --table FILE)", file=sys.stderr)
        return 2
    try:
        await claim_socket(Path(control_path))
    except RouterError as e:
        print(f"control socket: {e.message}", file=sys.stderr)
        return 1
    server = ProxyServer(None, args.listen, response_timeout=args.response_timeout, redirect=args.redirect or None)
    server.workers = args.workers
    try:
        open_planes(server, services_path)
    except TableError as e:
        print(f"table: {e}", file=sys.stderr)
        return 1
    try:
        socks = [socket.socket(fileno=int(fd)) for fd in args.listen_fds.split(",") if fd] if args.listen_fds else None
        redirect_socks = [socket.socket(fileno=int(fd)) for fd in args.redirect_fds.split(",") if fd]
        if args.redirect and not redirect_socks:
            redirect_socks = bind(*parse_listen(args.redirect))
        await server.start(host, port, socks, redirect_socks)
    except OSError as e:
        reason = os.strerror(e.errno).lower() if e.errno else str(e)
        print(f"listen {args.listen}: {reason}", file=sys.stderr)
        return 1
    stop = asyncio.Event()
    control = ListenControl(server, services_path, stop.set)
    try:
        ctl = await serve_control(Path(control_path), control)
    except OSError as e:
        print(f"control socket {control_path}: {e.strerror or e}", file=sys.stderr)
        await server.shutdown(0)
        return 1
    inode = os.stat(control_path).st_ino
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("router listening on %s for %s (control %s)", args.listen,
             ", ".join(f"{n} (table version {p.table.version})" for n, p in sorted(server.planes.items()))
             or "no service yet", control_path)
    await stop.wait()
    log.info("shutting down: finishing in-flight requests (up to %gs)", DRAIN_TIMEOUT)
    if server.retire_grace:     # a retired worker takes tables until its last client is gone
        await server.shutdown()
    ctl.close()
    remove_socket(Path(control_path), inode)
    if not server.retire_grace:
        await server.shutdown()
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shipyard.router.dataplane.proxy",
                                description="shipyard's embedded router (data plane) for one listen address")
    p.add_argument("--listen", required=True, help="HOST:PORT to accept the services' traffic on")
    p.add_argument("--listen-fds", default="",
                   help="comma-separated inherited fds of sockets already listening on --listen (from the daemon)")
    p.add_argument("--redirect", default="", help="HOST:PORT of a plain-HTTP listener answering 308 to https")
    p.add_argument("--redirect-fds", default="",
                   help="comma-separated inherited fds of sockets already listening on --redirect (from the daemon)")
    p.add_argument("--control", required=True, help="path of the unix control socket")
    p.add_argument("--services", default="",
                   help="where the services served (their domains, their tables' files) are persisted")
    p.add_argument("--service", default="", help="serve this one service on every host (with --table)")
    p.add_argument("--table", default="", help="where --service's table is persisted")
    p.add_argument("--workers", type=int, default=1,
                   help="router processes on the address (router.workers): this one enforces 1/N of the limits")
    p.add_argument("--worker", type=int, default=0, help="which of them this is (0: the first)")
    p.add_argument("--response-timeout", type=float, default=60.0,
                   help="seconds an instance may stay silent before the client gets a 504")
    args = p.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s router[%(process)d] %(levelname)s %(message)s")
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run(args))
    return uvloop.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
