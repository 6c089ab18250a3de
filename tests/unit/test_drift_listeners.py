"""Parsing the kernel's TCP tables."""

from __future__ import annotations

import socket

from shipyard.drift.listeners import listening_sockets, parse_lines, parse_table

TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0 100 0 0 10 0
   1: 0100007F:A1B2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 23456 1 0 20 4 30 10 -1
   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 34567 1 0 100 0 0 10 0
"""
TCP6 = """  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 45678 1 0 100 0 0 10 0
"""


def test_ipv4_listeners_only() -> None:
    found = parse_table(TCP, socket.AF_INET)
    assert [(s.address, s.port, s.inode) for s in found] == [("127.0.0.1", 8080, 12345), ("0.0.0.0", 80, 34567)]


def test_ipv6_listener() -> None:
    [s] = parse_table(TCP6, socket.AF_INET6)
    assert (s.address, s.port, s.inode) == ("::1", 8081, 45678)


def test_a_real_listening_socket_is_seen() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert listening_sockets([port]) == []  # bound, not listening
        sock.listen()
        [found] = listening_sockets([port])
        assert found.port == port and found.address == "127.0.0.1" and found.inode > 0


def test_a_table_of_many_sockets_is_streamed_not_held() -> None:
    """A loaded machine lists tens of thousands of sockets (mostly TIME_WAIT): the scan keeps
    only the LISTEN lines, whatever the table's size (issue 13's soak)."""
    import tracemalloc

    established = TCP.splitlines()[2]

    def table():    # ~15 MB of table text, never all in memory at once
        for n in range(100_000):
            yield established if n % 1000 else TCP.splitlines()[1]

    tracemalloc.start()
    try:
        found = list(parse_lines(table(), socket.AF_INET))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(found) == 100 and all(s.port == 8080 for s in found)
    assert peak < 512 * 1024, f"parsing held {peak // 1024} KiB"
