"""Unit tests for stomp_chat.proxies: the client behind trusted reverse proxies."""

from __future__ import annotations

import pytest

from stomp_chat.proxies import NO_PROXIES, TrustedProxies, parse_trusted_proxies

PROXIES = TrustedProxies.parse("127.0.0.1, 10.0.0.0/8, ::1, 2001:db8:1::/48")


def test_without_trusted_proxies_the_header_is_ignored() -> None:
    """By default nobody is trusted: X-Forwarded-For never changes who the client is."""
    assert not NO_PROXIES
    assert NO_PROXIES.client("127.0.0.1", ["203.0.113.9"]) == "127.0.0.1"


def test_an_untrusted_peer_cannot_choose_its_address() -> None:
    """A client that is not a trusted proxy sending the header is its own TCP peer."""
    assert PROXIES.client("198.51.100.7", ["203.0.113.9"]) == "198.51.100.7"


@pytest.mark.parametrize(
    ("peer", "values", "client"),
    [
        ("127.0.0.1", ["203.0.113.9"], "203.0.113.9"),
        # walked from the right: trusted hops are skipped, the first other is the client
        ("127.0.0.1", ["203.0.113.9, 10.1.2.3"], "203.0.113.9"),
        # a value the client wrote itself, left of what the proxy appended, is not believed
        ("127.0.0.1", ["6.6.6.6, 203.0.113.9"], "203.0.113.9"),
        # several header lines are one list, in order
        ("127.0.0.1", ["6.6.6.6", "203.0.113.9"], "203.0.113.9"),
        # IPv6 peers and clients, bracketed or not, and IPv4-mapped peers
        ("::1", ["2001:db8:2::5"], "2001:db8:2::5"),
        ("::1", ["[2001:db8:2::5]"], "2001:db8:2::5"),
        ("::ffff:127.0.0.1", ["203.0.113.9"], "203.0.113.9"),
        ("127.0.0.1", ["::ffff:203.0.113.9"], "203.0.113.9"),
        # every hop trusted: the request began at the leftmost
        ("127.0.0.1", ["10.0.0.5, 10.0.0.6"], "10.0.0.5"),
        ("2001:db8:1::1", ["203.0.113.9"], "203.0.113.9"),
    ],
)
def test_a_trusted_proxys_header_names_the_client(peer: str, values: list[str],
                                                  client: str) -> None:
    """Through a trusted proxy, the client is the rightmost untrusted hop."""
    assert PROXIES.client(peer, values) == client


@pytest.mark.parametrize(
    "values",
    [[], [""], ["unknown"], ["203.0.113.9, nonsense"], ["203.0.113.9,,10.0.0.1"],
     ["203.0.113.9:4711"], ["x" * 5000], ["203.0.113.9\x00"]],
)
def test_a_header_that_cannot_be_read_keeps_the_peer(values: list[str]) -> None:
    """A missing, empty or malformed header never fails a request: the peer is kept."""
    assert PROXIES.client("127.0.0.1", values) == "127.0.0.1"


def test_the_option_takes_addresses_and_networks_of_both_families() -> None:
    """Addresses, CIDR networks (host bits allowed), IPv6 in brackets or not, a list."""
    proxies = parse_trusted_proxies("192.0.2.1,10.0.0.1/8 , [::1], fd00::/8")
    assert [str(n) for n in proxies.networks] == ["192.0.2.1/32", "10.0.0.0/8", "::1/128",
                                                  "fd00::/8"]
    assert proxies.trusts("10.200.0.1") and proxies.trusts("fd12::1")
    assert not proxies.trusts("192.0.2.2") and not proxies.trusts("not an address")
    assert TrustedProxies.parse(["127.0.0.1", ""]).trusts("127.0.0.1")
    assert not parse_trusted_proxies("")


@pytest.mark.parametrize("value", ["10.0.0.0/33", "nginx", "10.0.0.1-10.0.0.9", "::1/129"])
def test_a_bad_entry_is_named(value: str) -> None:
    """Anything but an address or a network is refused, naming the entry."""
    with pytest.raises(ValueError, match="--trusted-proxies: .* is not an IP address"):
        parse_trusted_proxies(f"127.0.0.1,{value}")
