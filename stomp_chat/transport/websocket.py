"""STOMP over WebSocket: an Autobahn protocol wrapping the STOMP protocol.

Incoming messages are one byte stream for the STOMP parser (a message may
hold several frames, a frame may span messages); every frame the STOMP
protocol writes leaves as one WebSocket message, text when it is valid UTF-8
and binary otherwise.

A WebSocket that is closing (a Close was sent or received, the TCP connection
not gone yet) drops what is written to it: delivering to it must never fail
the publisher. While the socket's write buffer is full, only the most recent
ping is answered, once it drains (RFC 6455, 5.5.3), so a client that floods
pings and reads nothing cannot grow the server's memory.
"""

from __future__ import annotations

import fnmatch
import struct
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from stomp_chat.auth.origins import origin_allowed as auth_origin_allowed
from stomp_chat.identity import ConnectionInfo
from stomp_chat.proxies import NO_PROXIES, TrustedProxies
from stomp_chat.transport.connection import connection_info_from_request
from stomp_chat.transport.limits import TOO_MANY_CONNECTIONS
from stomp_chat.transport.sockets import set_no_delay
from stomp_chat.transport.stomp import StompFactory, StompProtocol

log = Logger()

#: Offered STOMP subprotocols, best first.
STOMP_SUBPROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")

_OPCODE_TEXT = 0x1
_OPCODE_BINARY = 0x2
_STATE_OPEN = WebSocketProtocol.STATE_OPEN
#: HTTP status of a handshake refused by the per-address connection cap.
TOO_MANY_REQUESTS = 429
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")
#: The first byte of a whole (FIN) text or binary message.
_FIN_TEXT = 0x80 | _OPCODE_TEXT
_FIN_BINARY = 0x80 | _OPCODE_BINARY


def _header(data: bytes) -> bytes:
    """The header that makes ``data`` one unmasked, unfragmented WebSocket message: text
    when it is valid UTF-8, binary otherwise (one call per frame: it runs per delivery)."""
    if data.isascii():  # the common case, at half the cost of decoding
        first = _FIN_TEXT
    else:
        try:
            data.decode("utf-8")
            first = _FIN_TEXT
        except UnicodeDecodeError:
            first = _FIN_BINARY
    size = len(data)
    if size < 126:
        return bytes((first, size))
    if size < 65536:
        return _HEADER_16.pack(first, 126, size)
    return _HEADER_64.pack(first, 127, size)


class WebSocketFrameTransport:
    """What the STOMP protocol sees as its transport on a WebSocket."""

    #: Each write is one message: frames written together must come as a sequence.
    frames_are_messages = True

    def __init__(self, ws: StompWebSocketProtocol) -> None:
        self._ws = ws
        self.disconnecting = False

    @property
    def _socket(self) -> Any:
        """The connection under the WebSocket (TCP, or TLS over TCP)."""
        return self._ws.transport

    @property
    def socket_transport(self) -> Any:
        """The same, for flow control that measures what the socket holds."""
        return self._ws.transport

    def write(self, data: bytes) -> None:
        """Send one STOMP frame as one WebSocket message.

        Server frames are unmasked, so framing is a 2-10 byte header; writing
        it here skips Autobahn's ``sendMessage``, whose per-call logging costs
        more than everything else a delivery does. Autobahn still owns the
        handshake, incoming frames, pings and the closing handshake.
        """
        ws = self._ws
        if ws.state != _STATE_OPEN:
            return  # closing: the peer will read no more STOMP frames
        if ws.send_queue or ws._perMessageCompress is not None:
            ws.sendMessage(data, isBinary=_header(data)[0] == _FIN_BINARY)
            return
        self._socket.write(_header(data) + data)

    def writeSequence(self, seq: Sequence[bytes]) -> None:
        """Send each STOMP frame as its own WebSocket message, in one socket write."""
        ws = self._ws
        if ws.state != _STATE_OPEN:
            return
        if ws.send_queue or ws._perMessageCompress is not None:
            for data in seq:
                self.write(data)
            return
        pieces = []
        for data in seq:
            pieces.append(_header(data))
            pieces.append(data)
        self._socket.write(b"".join(pieces))

    def loseConnection(self) -> None:
        if not self.disconnecting:
            self.disconnecting = True
            code = getattr(getattr(self._ws, "factory", None), "close_code", 1000)
            if code == 1000:
                self._ws.sendClose(code)
            else:  # sendClose refuses the protocol's own codes, such as 1001 "going away"
                self._ws.sendCloseFrame(code=code, isReply=False)

    def abortConnection(self) -> None:
        transport = self._socket
        if transport is not None:
            transport.abortConnection()

    def pauseProducing(self) -> None:
        self._socket.pauseProducing()

    def resumeProducing(self) -> None:
        self._socket.resumeProducing()

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        """Register ``producer`` with the socket, through a relay that also sends held pongs."""
        producer = _SocketProducer(self._ws, producer)
        transport = self._socket
        try:
            transport.registerProducer(producer, streaming)
        except RuntimeError:
            # twisted.web's HTTP channel registered itself before Autobahn took
            # the connection over; it no longer has a say in it.
            transport.unregisterProducer()
            transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._socket.unregisterProducer()

    def getPeer(self) -> Any:
        return self._socket.getPeer()

    def getHost(self) -> Any:
        return self._socket.getHost()


@implementer(IPushProducer)
class _SocketProducer:
    """Relays the socket's back-pressure to the STOMP protocol.

    When the socket's buffer has drained, the pong held back while it was
    full goes out first.
    """

    def __init__(self, ws: StompWebSocketProtocol, producer: IPushProducer) -> None:
        self.ws = ws
        self.producer = producer

    def pauseProducing(self) -> None:
        self.producer.pauseProducing()

    def resumeProducing(self) -> None:
        self.ws.send_held_pong()
        self.producer.resumeProducing()

    def stopProducing(self) -> None:
        self.producer.stopProducing()


class StompWebSocketProtocol(WebSocketServerProtocol):
    """Negotiates STOMP on the handshake, then carries its bytes."""

    factory: StompWebSocketFactory
    stomp: StompProtocol | None = None
    connection_info: ConnectionInfo | None = None
    #: The payload of the latest ping not answered yet (the socket was full).
    _held_pong: bytes | None = None

    def connectionMade(self) -> None:
        set_no_delay(self.transport)
        super().connectionMade()

    def onConnect(self, request: ConnectionRequest) -> str | None:
        if not self.factory.origin_allowed(request, self.transport):
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        info = connection_info_from_request(
            request, self.transport, self.factory.trusted_proxies
        )
        if not self.factory.stomp_factory.admits(info.peer_host):
            raise ConnectionDeny(TOO_MANY_REQUESTS, TOO_MANY_CONNECTIONS)
        self.connection_info = info
        for subprotocol in STOMP_SUBPROTOCOLS:
            if subprotocol in request.protocols:
                return subprotocol
        return None

    def onOpen(self) -> None:
        stomp = self.factory.stomp_factory.build_stomp()
        stomp.connection = self.connection_info
        self.stomp = stomp
        stomp.makeConnection(WebSocketFrameTransport(self))

    def onPing(self, payload: bytes) -> None:
        """Answer at once, or, while the socket's buffer is full, hold only the latest ping."""
        stomp = self.stomp
        if stomp is not None and stomp.writes_paused:
            self._held_pong = payload
            return
        self._held_pong = None
        super().onPing(payload)

    def dataReceived(self, data: bytes) -> None:
        """Handle one read as one OutputBatch: a read holds many WebSocket messages (SENDs),
        and what they make each connection write goes out in one write."""
        stomp = self.stomp
        if stomp is None:  # the handshake, or the connection is closing
            super().dataReceived(data)
            return
        output = stomp.output
        output.begin()
        try:
            # Autobahn's own dataReceived only adds a debug line, formatted on every read.
            self._dataReceived(data)
        finally:
            output.end()

    def sendCloseFrame(
        self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False
    ) -> None:
        """Frames held for this connection during a read go out before its Close."""
        stomp = self.stomp
        if stomp is not None:
            stomp.flush()
        super().sendCloseFrame(code, reasonUtf8, isReply)

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> bool | None:
        """The peer sent Close: end its STOMP session now, not when TCP goes.

        A peer that sends Close and then reads nothing keeps its TCP
        connection open while the server's reply waits in the buffer; the
        session's close cuts it after the close linger.
        """
        failed = super().onCloseFrame(code, reasonRaw)
        stomp = self.stomp
        if stomp is not None and self.state != _STATE_OPEN:
            if stomp.close_reason is None:
                stomp.close_reason = f"websocket closed by the client ({code})"
            stomp.session.close()
        return failed

    def send_held_pong(self) -> None:
        payload, self._held_pong = self._held_pong, None
        if payload is not None and self.state == _STATE_OPEN:
            self.sendPong(payload)

    # Autobahn's streaming API: payload goes to the STOMP parser as it
    # arrives, so Autobahn never buffers a whole message; the parser's own
    # limits then answer an oversized frame with a STOMP ERROR rather than a
    # dropped connection, and a message may hold any number of frames.

    def onMessageBegin(self, isBinary: bool) -> None:
        pass

    def onMessageFrameBegin(self, length: int) -> None:
        pass

    def onMessageFrameData(self, payload: bytes) -> None:
        if self.stomp is not None:
            self.stomp.dataReceived(payload)

    def onMessageFrameEnd(self) -> None:
        pass

    def onMessageEnd(self) -> None:
        pass

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        stomp, self.stomp = self.stomp, None
        if stomp is not None:
            # The code only: the reason text is the client's, unfit for a log line.
            stomp.connectionLost(Failure(ConnectionError(f"websocket closed ({code})")))


class StompWebSocketFactory(WebSocketServerFactory):
    """Accepts STOMP WebSocket connections from allowed origins."""

    protocol = StompWebSocketProtocol  # type: ignore[assignment]
    #: The code of the closes this server starts: 1001 (going away) once it shuts down.
    close_code = 1000

    def __init__(
        self,
        stomp_factory: StompFactory,
        *,
        allowed_origins: Sequence[str] = (),
        trusted_proxies: TrustedProxies = NO_PROXIES,
        url: str | None = None,
        reactor: Any = None,
    ) -> None:
        super().__init__(url, protocols=list(STOMP_SUBPROTOCOLS), reactor=reactor)
        self.stomp_factory = stomp_factory
        #: Proxies whose ``X-Forwarded-For`` names the client (per-address cap, logs).
        self.trusted_proxies = trusted_proxies
        self.allowed_origins = [pattern.strip() for pattern in allowed_origins if pattern.strip()]
        self.setProtocolOptions(
            # Messages are streamed into the STOMP parser, which enforces the
            # frame limits itself (see StompWebSocketProtocol).
            maxMessagePayloadSize=0,
            maxFramePayloadSize=0,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=2,
        )

    def origin_allowed(self, request: ConnectionRequest, transport: Any = None) -> bool:
        """Allow clients without an Origin, a configured origin, or (none configured)
        the address the connection reached; never trust the ``Host`` header."""
        local = transport.getHost() if transport is not None else None
        return auth_origin_allowed(
            request.headers.get("origin"),
            self.allowed_origins,
            getattr(local, "host", ""),
            getattr(local, "port", 0),
        )


def origin_matches(origin: str, host: str, patterns: Sequence[str]) -> bool:
    """Whether a browser ``origin`` may connect to a server reached as ``host``.

    With no patterns only the server's own origin may; ``*`` allows all, and
    other patterns match the whole origin (``https://*.example.com``) or its
    host and port alone (``chat.example.com:8443``).
    """
    parts = urlsplit(origin)
    netloc = (parts.netloc or origin).lower()
    if not patterns:
        return _same_host(netloc, parts.scheme, (host or "").lower())
    for pattern in patterns:
        pattern = pattern.lower()
        if pattern == "*" or fnmatch.fnmatchcase(origin.lower(), pattern):
            return True
        if "://" not in pattern and fnmatch.fnmatchcase(netloc, pattern):
            return True
    return False


def _same_host(netloc: str, scheme: str, host: str) -> bool:
    default_port = {"http": "80", "https": "443"}.get(scheme, "")

    def normalise(value: str) -> str:
        if default_port and value.endswith(":" + default_port):
            return value[: -len(default_port) - 1]
        return value

    return normalise(netloc) == normalise(host)
