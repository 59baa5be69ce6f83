"""The relay's Redis connections: txredisapi protocols that report to a Link.

This is the only module that imports txredisapi, which installs the global
reactor when imported: the relay imports it when it starts, never before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import HostnameEndpoint
from twisted.logger import Logger

from stomp_chat.cluster.address import RedisAddress
from stomp_chat.cluster.ingest import ReadBatch
from stomp_chat.cluster.linkstate import Link
from stomp_chat.cluster.resp import ProtocolBroken, RespReader, encode_command

log = Logger()

#: The first and the longest wait between two attempts to connect, in seconds.
DEFAULT_FIRST_RETRY = 0.5
DEFAULT_MAX_RETRY = 10.0

#: Told of every message on a subscribed channel: (channel, payload).
MessageHandler = Callable[[bytes | str, bytes | str], object]


def _no_delay(transport: Any) -> None:
    """Small commands and messages must not wait for Nagle's algorithm."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        set_no_delay(True)


@inlineCallbacks
def _prepare(protocol: Any) -> Any:
    """AUTH and SELECT, then tell the link the connection is ready.

    txredisapi's own version stops reconnecting for good when either fails,
    which a connection closed mid-handshake (a proxy in front of a Redis
    that is down) also makes them do: here a failed handshake only drops
    the connection, and the next attempt comes after the usual back-off.
    """
    _no_delay(protocol.transport)
    try:
        if protocol.password is not None:
            reply = yield protocol.auth(protocol.password, protocol.username)
            if isinstance(reply, Exception):
                raise reply
        if protocol.dbid is not None:
            reply = yield protocol.select(protocol.dbid)
            if isinstance(reply, Exception):
                raise reply
    except Exception as error:
        if protocol.transport.connected:
            log.warn("Redis refused a connection's set-up: {error}; retrying", error=error)
            protocol.transport.loseConnection()
        return
    protocol.connected = 1
    protocol._ready = True
    waiting, protocol._waiting_for_connect = protocol._waiting_for_connect, []
    for d in waiting:
        d.callback(protocol)
    protocol.factory.link.connected(protocol)


class _FastWire:
    """Replies read by stomp_chat.cluster.resp, all that arrived in one pass, and
    commands encoded there: txredisapi's protocol otherwise, with the same values."""

    charset: str | None
    transport: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._replies = RespReader(
            self.tryConvertData,  # type: ignore[attr-defined]
            txredisapi.ResponseError,
            txredisapi.InvalidResponse,
        )

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        try:
            replies = self._replies.feed(data)
        except ProtocolBroken as error:
            log.error("unreadable reply from Redis: {error}; reconnecting", error=error)
            self.transport.loseConnection()
            return
        for reply in replies:
            if reply == "QUEUED":
                self.transactions += 1  # type: ignore[attr-defined]
            else:
                reply = self.handleTransactionData(reply)  # type: ignore[attr-defined]
            self.replyReceived(reply)  # type: ignore[attr-defined]

    def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
        if self.charset is not None:
            return super()._build_command(*args, **kwargs)  # type: ignore[misc,no-any-return]
        return encode_command(args, self._encode_value)  # type: ignore[attr-defined]


class CommandProtocol(_FastWire, txredisapi.RedisProtocol):  # type: ignore[misc]
    """The commands connection: scripts, PUBLISH, PING."""

    def connectionMade(self) -> Any:
        return _prepare(self)

    def connectionLost(self, reason: Any) -> Any:
        self.factory.link.lost()
        return super().connectionLost(reason)


class SubscriberProtocol(_FastWire, txredisapi.SubscriberProtocol):  # type: ignore[misc]
    """The subscriber connection: the channels this server has local subscribers for."""

    def connectionMade(self) -> Any:
        return _prepare(self)

    def connectionLost(self, reason: Any) -> Any:
        self.factory.link.lost()
        return super().connectionLost(reason)

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        """One read of relayed messages, fanned out to local subscribers, is one batch:
        at load it holds tens of messages for the same connections."""
        batch: ReadBatch | None = self.factory.read_batch
        if batch is None:
            super().dataReceived(data, unpause)
            return
        batch.begin()
        try:
            super().dataReceived(data, unpause)
        finally:
            batch.end()

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.factory.on_message(channel, message)


def _back_off(factory: Any, max_retry: float) -> None:
    factory.initialDelay = min(DEFAULT_FIRST_RETRY, max_retry)
    factory.factor = 2.0
    factory.maxDelay = max_retry


def connect_commands(
    address: RedisAddress, reactor: Any, link: Link, reply_timeout: float,
    max_retry: float = DEFAULT_MAX_RETRY, *, convert_numbers: bool = True,
) -> Any:
    """Start the commands connection; returns its factory (``.handler`` sends commands).

    ``convert_numbers=False`` keeps every reply as Redis sent it (bytes): for
    connections that read stream entries, whose ids and values look like numbers.
    """
    factory = txredisapi.RedisFactory(
        address.redacted(), address.db, 1, isLazy=True, charset=None,
        password=address.password, replyTimeout=reply_timeout,
        convertNumbers=convert_numbers,
    )
    factory.protocol = CommandProtocol
    factory.link = link
    _back_off(factory, max_retry)
    factory.startConnecting(_endpoint(address, reactor))
    return factory


def connect_subscriber(
    address: RedisAddress, reactor: Any, link: Link, on_message: MessageHandler,
    max_retry: float = DEFAULT_MAX_RETRY, *, read_batch: ReadBatch | None = None,
) -> Any:
    """Start the subscriber connection; returns its factory. With ``read_batch``, each
    read's deliveries are written to each client connection at once when it ends."""
    factory = txredisapi.SubscriberFactory(isLazy=True)
    factory.protocol = SubscriberProtocol
    factory.charset = None  # bodies are bytes, not always UTF-8
    factory.convertNumbers = False
    factory.password = address.password
    factory.link = link
    factory.on_message = on_message
    factory.read_batch = read_batch
    _back_off(factory, max_retry)
    factory.startConnecting(_endpoint(address, reactor))
    return factory


def _endpoint(address: RedisAddress, reactor: Any) -> HostnameEndpoint:
    return HostnameEndpoint(reactor, address.host, address.port, timeout=5)
