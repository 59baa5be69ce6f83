"""The HTTP side: one twisted.web site for the WebSocket endpoint and JSON.

The WebSocket endpoint, the REST API and health checks share one port, so
one proxy rule and one TLS certificate serve them all.

Every connection must send its request line and headers within
``header_timeout`` seconds of opening (or of sending the first byte of its
next request), however slowly it trickles them: twisted.web's own timeout is
an idle one, reset by every byte. Too slow, the client gets a JSON 408 and is
closed. A connection idle between requests is closed after ``idle_timeout``.

Behind a trusted reverse proxy (``--trusted-proxies``) a request's client
address is the one ``X-Forwarded-For`` names (stomp_chat.proxies), for the
REST login throttle and the access log alike; the access log never shows a
token carried in a URL. With ``--auth none`` a request whose ``Host`` names
none of this server's addresses (DNS rebinding) is refused with 403 before
any resource, the WebSocket endpoint included, sees it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from stomp_chat.auth.origins import host_allowed
from stomp_chat.proxies import FORWARDED_FOR, NO_PROXIES, TrustedProxies
from stomp_chat.web.health import Health
from stomp_chat.web.json import JSONNotFound, error_body
from stomp_chat.web.page import ChatPage, StaticFiles
from stomp_chat.web.redact import access_log_line

log = Logger()

#: How long a client may take to send a request line and its headers.
DEFAULT_HEADER_TIMEOUT = 10.0
#: How long a connection may stay idle between requests (twisted.web's is 12 h).
DEFAULT_IDLE_TIMEOUT = 60.0

_REQUEST_TIMEOUT_BODY = json.dumps(
    {"error": "request-timeout", "message": "the request headers did not arrive in time"}
).encode()
_REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"Content-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: " + str(len(_REQUEST_TIMEOUT_BODY)).encode() + b"\r\n"
    b"Connection: close\r\n\r\n" + _REQUEST_TIMEOUT_BODY
)


class DeadlineHTTPChannel(HTTPChannel):
    """An HTTP channel with an absolute deadline for each request's line and headers."""

    #: Set by the site that builds the channel.
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    _header_deadline: IDelayedCall | None = None
    #: Between requests: the deadline starts at the next request's first byte.
    _between_requests = False

    def connectionMade(self) -> None:
        super().connectionMade()  # sets TCP_NODELAY on TCP transports
        self._start_header_deadline()

    def dataReceived(self, data: bytes) -> None:
        if self._between_requests:
            self._between_requests = False
            self._start_header_deadline()
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self._cancel_header_deadline()
        super().allHeadersReceived()

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        if self.persistent and self.transport is not None:
            self._between_requests = True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_header_deadline()
        super().connectionLost(reason)

    def _start_header_deadline(self) -> None:
        self._cancel_header_deadline()
        self._header_deadline = self.callLater(self.header_timeout, self._headers_too_slow)

    def _cancel_header_deadline(self) -> None:
        deadline, self._header_deadline = self._header_deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        transport = self.transport
        if transport is None:
            return
        log.info(
            "closing HTTP connection from {peer}: no request headers within {timeout} s",
            peer=str(transport.getPeer()),
            timeout=self.header_timeout,
        )
        transport.write(_REQUEST_TIMEOUT_RESPONSE)
        self.loseConnection()


class ChatRequest(Request):
    """A request whose client address is the one a trusted proxy forwarded, if any."""

    _client_address: Any = None

    def getClientAddress(self) -> Any:
        if self._client_address is None:
            self._client_address = self._forwarded_client()
        return self._client_address

    def _forwarded_client(self) -> Any:
        peer = super().getClientAddress()
        site = getattr(self.channel, "site", None) if self.channel is not None else None
        proxies: TrustedProxies = getattr(site, "trusted_proxies", NO_PROXIES)
        host = getattr(peer, "host", None)
        if not proxies or host is None:
            return peer
        values = self.requestHeaders.getRawHeaders(FORWARDED_FOR.encode("ascii"), [])
        client = proxies.client(host, [v.decode("latin-1") for v in values])
        if client == host:
            return peer
        # The client's port is not forwarded: 0 stands for "unknown".
        kind = IPv6Address if ":" in client else IPv4Address
        return kind("TCP", client, 0)


class ChatSite(Site):
    """The site: its channels have a header deadline and a sane idle timeout."""

    protocol = DeadlineHTTPChannel  # type: ignore[assignment]

    def __init__(
        self,
        resource: Resource,
        *,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        trusted_proxies: TrustedProxies = NO_PROXIES,
        reactor: Any = None,
    ) -> None:
        super().__init__(
            resource,
            requestFactory=ChatRequest,
            timeout=idle_timeout,
            logFormatter=access_log_line,
            reactor=reactor,
        )
        self.header_timeout = header_timeout
        self.trusted_proxies = trusted_proxies

    def logPrefix(self) -> str:
        """Keep twisted.web's log line, "Site starting on PORT", that tooling reads."""
        return "Site"

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.header_timeout = self.header_timeout
        return channel


#: Paths a load balancer's health check may reach under any ``Host``: they tell nothing.
HOST_CHECK_EXEMPT = frozenset({b"health", b"healthz", b"ready"})


class ForbiddenHost(Resource):
    """403 JSON for a request naming a host this server is not (DNS rebinding)."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        return error_body(
            request, 403, "forbidden-host",
            "this server does not answer to that host name; list it in --allowed-origins",
        )


class Root(Resource):
    """Unknown paths get a JSON 404 rather than twisted.web's HTML page; no response may
    be sniffed into another content type (a JSON body read as HTML or script).

    ``host_patterns`` (``--auth none`` only: the ``--allowed-origins`` patterns) turns
    on the ``Host`` check, here so that it stands in front of every resource."""

    def __init__(self, host_patterns: list[str] | None = None) -> None:
        super().__init__()
        self.host_patterns = host_patterns

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        request.setHeader(b"x-content-type-options", b"nosniff")
        if self.host_patterns is not None and path not in HOST_CHECK_EXEMPT:
            host = request.getHeader(b"host")
            local = getattr(request.getHost(), "host", "")
            if not host_allowed(
                host.decode("latin-1") if host is not None else None, self.host_patterns, local
            ):
                log.info("refusing a request for host {host!r} from {peer} (--auth none: "
                         "not an address of this server)", host=host,
                         peer=getattr(request.getClientAddress(), "host", "?"))
                return ForbiddenHost()
        return super().getChildWithDefault(path, request)

    def getChild(self, path: bytes, request: Request) -> Resource:
        return JSONNotFound()


def build_site(
    websocket_factory: Any,
    *,
    health: Callable[[], dict[str, Any]] | None = None,
    api: Resource | None = None,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    reactor: Any = None,
    resources: Mapping[bytes, Resource] | None = None,
    trusted_proxies: TrustedProxies = NO_PROXIES,
    host_patterns: list[str] | None = None,
) -> Site:
    """The root: the chat page at ``/``, ``/ws/chat`` (WebSocket), ``/healthz``, ``/api/...``,
    and ``resources``. ``host_patterns`` turns the ``Host`` check on (``--auth none``)."""
    root = Root(host_patterns)
    root.putChild(b"", ChatPage())
    root.putChild(b"static", StaticFiles())
    ws = Resource()
    ws.putChild(b"chat", WebSocketResource(websocket_factory))
    root.putChild(b"ws", ws)
    root.putChild(b"healthz", Health(health or dict))
    if api is not None:
        root.putChild(b"api", api)
    for path, resource in (resources or {}).items():
        root.putChild(path, resource)
    site = ChatSite(
        root, header_timeout=header_timeout, idle_timeout=idle_timeout,
        trusted_proxies=trusted_proxies, reactor=reactor,
    )
    site.displayTracebacks = False
    return site
