"""The relay's Redis connections: txredisapi protocols that report to a Link.

This is the only module that imports txredisapi, which installs the global
reactor when imported: the relay imports it when it starts, never before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import txredisapi
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint

from stomp_chat.cluster.address import RedisAddress
from stomp_chat.cluster.linkstate import Link

#: Told of every message on a subscribed channel: (channel, payload).
MessageHandler = Callable[[bytes | str, bytes | str], object]


def _no_delay(transport: Any) -> None:
    """Small commands and messages must not wait for Nagle's algorithm."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        set_no_delay(True)


def _report_ready(protocol: Any, made: Any) -> Any:
    """Tell the protocol's link once the connection is ready (AUTH and SELECT done)."""

    def ready(result: object) -> object:
        if protocol._ready:
            protocol.factory.link.connected(protocol)
        return result

    if isinstance(made, Deferred):
        made.addCallback(ready)
    else:
        ready(None)
    return made


class CommandProtocol(txredisapi.RedisProtocol):  # type: ignore[misc]
    """The commands connection: scripts, PUBLISH, PING."""

    def connectionMade(self) -> Any:
        _no_delay(self.transport)
        return _report_ready(self, super().connectionMade())

    def connectionLost(self, reason: Any) -> Any:
        self.factory.link.lost()
        return super().connectionLost(reason)


class SubscriberProtocol(txredisapi.SubscriberProtocol):  # type: ignore[misc]
    """The subscriber connection: the channels this server has local subscribers for."""

    def connectionMade(self) -> Any:
        _no_delay(self.transport)
        return _report_ready(self, super().connectionMade())

    def connectionLost(self, reason: Any) -> Any:
        self.factory.link.lost()
        return super().connectionLost(reason)

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.factory.on_message(channel, message)


def connect_commands(
    address: RedisAddress, reactor: Any, link: Link, reply_timeout: float
) -> Any:
    """Start the commands connection; returns its factory (``.handler`` sends commands)."""
    factory = txredisapi.RedisFactory(
        address.redacted(), address.db, 1, isLazy=True, charset=None,
        password=address.password, replyTimeout=reply_timeout,
    )
    factory.protocol = CommandProtocol
    factory.link = link
    factory.startConnecting(_endpoint(address, reactor))
    return factory


def connect_subscriber(
    address: RedisAddress, reactor: Any, link: Link, on_message: MessageHandler
) -> Any:
    """Start the subscriber connection; returns its factory."""
    factory = txredisapi.SubscriberFactory(isLazy=True)
    factory.protocol = SubscriberProtocol
    factory.charset = None  # bodies are bytes, not always UTF-8
    factory.convertNumbers = False
    factory.password = address.password
    factory.link = link
    factory.on_message = on_message
    factory.startConnecting(_endpoint(address, reactor))
    return factory


def _endpoint(address: RedisAddress, reactor: Any) -> HostnameEndpoint:
    return HostnameEndpoint(reactor, address.host, address.port, timeout=5)
