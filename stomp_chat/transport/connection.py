"""What a transport knows of its peer, as the ``ConnectionInfo`` every layer reads.

Built once per connection: from the socket for raw STOMP, from the socket and
the opening handshake for WebSocket. Authenticators read the headers, cookies
and query of a handshake; per-address limits key on ``peer_host``, which on a
WebSocket from a trusted proxy is the client ``X-Forwarded-For`` names.
"""

from __future__ import annotations

from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie
from types import MappingProxyType
from typing import Any

from autobahn.websocket.types import ConnectionRequest
from twisted.internet.interfaces import ISSLTransport

from stomp_chat.identity import TRANSPORT_TCP, TRANSPORT_WEBSOCKET, ConnectionInfo
from stomp_chat.proxies import FORWARDED_FOR, NO_PROXIES, TrustedProxies


def peer_of(transport: Any) -> tuple[str, str]:
    """``(host:port, host)`` of the transport's peer; a UNIX socket has no host."""
    address = transport.getPeer()
    host = getattr(address, "host", None)
    if host is None:
        return str(address), ""
    port = getattr(address, "port", None)
    label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return label, host


def is_secure(transport: Any) -> bool:
    """Whether TLS runs under this transport (an ``ssl:`` endpoint)."""
    return ISSLTransport.providedBy(transport)


def connection_info_from_transport(transport: Any) -> ConnectionInfo:
    """The ``ConnectionInfo`` of a raw STOMP connection: its peer and TLS only."""
    peer, host = peer_of(transport)
    return ConnectionInfo(
        peer=peer, peer_host=host, transport=TRANSPORT_TCP, secure=is_secure(transport)
    )


def connection_info_from_request(
    request: ConnectionRequest, transport: Any, proxies: TrustedProxies = NO_PROXIES
) -> ConnectionInfo:
    """The ``ConnectionInfo`` of a WebSocket: the socket plus its opening handshake.

    ``transport`` is the connection under the WebSocket (TCP, or TLS over TCP).
    Header names are lower case; a cookie the browser sent twice keeps its first
    value, as most servers do. Through a trusted proxy the peer is the client it
    forwarded for, shown in logs as ``client via proxy``.
    """
    peer, host = peer_of(transport)
    headers = {str(name).lower(): str(value) for name, value in request.headers.items()}
    if proxies and FORWARDED_FOR in headers:
        client = proxies.client(host, [headers[FORWARDED_FOR]])
        if client != host:
            peer, host = f"{client} via {peer}", client
    query = {str(name): tuple(str(v) for v in values) for name, values in request.params.items()}
    return ConnectionInfo(
        peer=peer,
        peer_host=host,
        transport=TRANSPORT_WEBSOCKET,
        secure=is_secure(transport),
        origin=headers.get("origin") or None,
        headers=MappingProxyType(headers),
        cookies=MappingProxyType(parse_cookies(headers.get("cookie", ""))),
        query=MappingProxyType(query),
    )


def parse_cookies(header: str) -> Mapping[str, str]:
    """The name/value pairs of a ``Cookie`` header; a malformed header yields what parsed."""
    cookies: dict[str, str] = {}
    # One pair at a time, so that one malformed pair does not hide the others.
    for pair in header.replace(",", ";").split(";"):
        if "=" not in pair:
            continue
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(pair.strip())
        except CookieError:
            continue
        for name, morsel in jar.items():
            cookies.setdefault(name, morsel.value)
    return cookies
