"""Which Host headers the API answers to, and where `serve` may listen (pure policies)."""

from __future__ import annotations

import pytest

from shipyard.server.api.hosts import HostPolicy, split_host
from shipyard.server.listen_policy import InsecureListen, check_listen

POLICY = HostPolicy.of(8123, ["Shipyard.Internal"])


@pytest.mark.parametrize("host", ["127.0.0.1:8123", "localhost:8123", "LocalHost:8123", "127.9.9.9:8123",
                                  "[::1]:8123", "127.0.0.1", "::1", "[::1]", "shipyard.internal:443",
                                  "shipyard.internal"])
def test_loopback_and_configured_names_are_answered(host: str) -> None:
    assert POLICY.allows(host)


@pytest.mark.parametrize("host", [None, "", "evil.example:8123", "evil.example", "127.0.0.1:8124",
                                  "localhost:80", "localhost.evil.example:8123", "10.0.0.1:8123",
                                  "[::2]:8123", "127.0.0.1:8123:1", "127.0.0.1:abc", "[::1", "::1]:8123",
                                  "127.0.0.1:٨١٢٣", "0.0.0.0:8123", "shipyard.internal.evil"])
def test_everything_else_is_refused(host: str | None) -> None:
    assert not POLICY.allows(host)


def test_split_host() -> None:
    assert split_host("Example.COM:80") == ("example.com", 80)
    assert split_host("[::1]:1") == ("::1", 1)
    assert split_host("::1") == ("::1", None)
    assert split_host(":80") is None


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "localhost:8080", "[::1]:9000", "127.0.0.5:1", ":0"])
def test_loopback_listen_is_fine(listen: str) -> None:
    check_listen(listen)


@pytest.mark.parametrize("listen", ["0.0.0.0:8080", "[::]:0", "192.168.1.10:80", "myhost:80"])
def test_network_listen_needs_tls_or_the_flag(listen: str) -> None:
    with pytest.raises(InsecureListen) as info:
        check_listen(listen)
    assert "in clear text" in info.value.message and "--insecure-listen" in (info.value.hint or "")
    check_listen(listen, insecure_listen=True)
    check_listen(listen, tls=True)


def test_the_tunnel_hint_names_the_port() -> None:
    with pytest.raises(InsecureListen) as info:
        check_listen("0.0.0.0:8443")
    assert "ssh -L 8443:127.0.0.1:8443 HOST" in (info.value.hint or "")
