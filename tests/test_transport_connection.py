"""Unit tests for stomp_chat.transport.connection: ConnectionInfo from sockets and handshakes."""

from __future__ import annotations

from autobahn.websocket.types import ConnectionRequest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from zope.interface import directlyProvides

from stomp_chat.identity import TRANSPORT_TCP, TRANSPORT_WEBSOCKET
from stomp_chat.transport.connection import (
    connection_info_from_request,
    connection_info_from_transport,
    parse_cookies,
    peer_of,
)


def _tcp(host: str = "198.51.100.4", port: int = 5000) -> StringTransport:
    return StringTransport(peerAddress=IPv4Address("TCP", host, port))


def _request(headers: dict[str, str], params: dict[str, list[str]] | None = None):
    return ConnectionRequest(
        "tcp4:198.51.100.4:5000", headers, "chat.example.com", "/ws/chat", params or {}, 13,
        headers.get("origin"), ["v12.stomp"], [],
    )


def test_peer_of_ipv4_ipv6_and_unix():
    """Peers are host:port, [v6]:port, or the socket path with no host."""
    assert peer_of(_tcp()) == ("198.51.100.4:5000", "198.51.100.4")
    v6 = StringTransport(peerAddress=IPv6Address("TCP", "2001:db8::1", 443))
    assert peer_of(v6) == ("[2001:db8::1]:443", "2001:db8::1")
    unix = StringTransport(peerAddress=UNIXAddress(b"/run/chat.sock"))
    label, host = peer_of(unix)
    assert host == "" and "chat.sock" in label


def test_raw_tcp_info_has_peer_and_no_handshake():
    """A raw TCP connection's info names its peer and transport and carries no headers."""
    info = connection_info_from_transport(_tcp())
    assert (info.peer, info.peer_host, info.transport, info.secure) == (
        "198.51.100.4:5000", "198.51.100.4", TRANSPORT_TCP, False,
    )
    assert dict(info.headers) == {} and dict(info.cookies) == {} and dict(info.query) == {}


def test_tls_is_noticed_on_either_transport():
    """A transport providing ISSLTransport (an ssl: endpoint) marks the connection secure."""
    transport = _tcp()
    directlyProvides(transport, ISSLTransport)
    assert connection_info_from_transport(transport).secure
    assert connection_info_from_request(_request({"host": "x"}), transport).secure


def test_websocket_info_from_the_handshake():
    """Headers, cookies, query parameters and Origin of the handshake are kept."""
    request = _request(
        {"host": "chat.example.com", "origin": "https://chat.example.com",
         "cookie": "session=abc123; theme=dark", "X-Trace": "t1"},
        {"token": ["a", "b"], "room": ["7"]},
    )
    info = connection_info_from_request(request, _tcp())
    assert info.transport == TRANSPORT_WEBSOCKET
    assert info.peer_host == "198.51.100.4"
    assert info.origin == "https://chat.example.com"
    assert info.headers["x-trace"] == "t1"
    assert dict(info.cookies) == {"session": "abc123", "theme": "dark"}
    assert dict(info.query) == {"token": ("a", "b"), "room": ("7",)}


def test_websocket_without_origin_or_cookies():
    """A non-browser client has no Origin and no cookies."""
    info = connection_info_from_request(_request({"host": "x"}), _tcp())
    assert info.origin is None
    assert dict(info.cookies) == {}


def test_the_info_cannot_be_changed():
    """Headers, cookies and query are read-only views."""
    info = connection_info_from_request(_request({"host": "x", "cookie": "a=1"}), _tcp())
    for mapping in (info.headers, info.cookies, info.query):
        try:
            mapping["new"] = "value"  # type: ignore[index]
        except TypeError:
            continue
        raise AssertionError(f"{mapping!r} accepted a write")


def test_parse_cookies_keeps_the_good_pairs_of_a_malformed_header():
    """A malformed pair is skipped; the other cookies still parse; the first value wins."""
    cookies = parse_cookies('a=1; bad pair; b="quoted"; ;=x; c=3; a=2; \x00=0')
    assert cookies["a"] == "1"
    assert cookies["b"] == "quoted"
    assert cookies["c"] == "3"
    assert parse_cookies("") == {}


def test_a_handshake_through_a_trusted_proxy_is_from_the_forwarded_client():
    """Through a trusted proxy the handshake's peer is the client X-Forwarded-For names
    (the per-address cap counts it), shown as 'client via proxy'; from others the
    header is ignored."""
    from stomp_chat.proxies import TrustedProxies

    proxies = TrustedProxies.parse("198.51.100.0/24")
    forwarded = _request({"x-forwarded-for": "6.6.6.6, 203.0.113.9"})
    info = connection_info_from_request(forwarded, _tcp(), proxies)
    assert (info.peer_host, info.peer) == ("203.0.113.9", "203.0.113.9 via 198.51.100.4:5000")
    untrusted = connection_info_from_request(forwarded, _tcp("192.0.2.1"), proxies)
    assert untrusted.peer_host == "192.0.2.1"
    assert connection_info_from_request(forwarded, _tcp()).peer_host == "198.51.100.4"
    broken = _request({"x-forwarded-for": "203.0.113.9, ???"})
    assert connection_info_from_request(broken, _tcp(), proxies).peer_host == "198.51.100.4"
