"""The HTTP side: one twisted.web site for the WebSocket endpoint and JSON.

The WebSocket endpoint, the REST API and health checks share one port, so
one proxy rule and one TLS certificate serve them all.

Every connection must send its request line and headers within
``header_timeout`` seconds of opening (or of sending the first byte of its
next request), however slowly it trickles them: twisted.web's own timeout is
an idle one, reset by every byte. Too slow, the client gets a JSON 408 and is
closed. A connection idle between requests is closed after ``idle_timeout``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from stomp_chat.web.health import Health
from stomp_chat.web.json import JSONNotFound
from stomp_chat.web.page import ChatPage, StaticFiles

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


class ChatSite(Site):
    """The site: its channels have a header deadline and a sane idle timeout."""

    protocol = DeadlineHTTPChannel  # type: ignore[assignment]

    def __init__(
        self,
        resource: Resource,
        *,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        reactor: Any = None,
    ) -> None:
        super().__init__(resource, timeout=idle_timeout, reactor=reactor)
        self.header_timeout = header_timeout

    def logPrefix(self) -> str:
        """Keep twisted.web's log line, "Site starting on PORT", that tooling reads."""
        return "Site"

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.header_timeout = self.header_timeout
        return channel


class Root(Resource):
    """Unknown paths get a JSON 404 rather than twisted.web's HTML page; no response may
    be sniffed into another content type (a JSON body read as HTML or script)."""

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        request.setHeader(b"x-content-type-options", b"nosniff")
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
) -> Site:
    """The root: the chat page at ``/``, ``/ws/chat`` (WebSocket), ``/healthz``, ``/api/...``,
    and ``resources``."""
    root = Root()
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
        root, header_timeout=header_timeout, idle_timeout=idle_timeout, reactor=reactor
    )
    site.displayTracebacks = False
    return site
