"""Ingestion: relayed payloads become deliveries to this server's subscribers."""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from stomp_chat.broker import USER_PREFIX, Broker, Message
from stomp_chat.cluster.envelope import decode_envelopes

log = Logger()

#: Told of every relayed message: (routing key, origin node, body).
RelayListener = Callable[[str, str, bytes], object]


class Ingestion:
    """Decodes what arrives on a channel and routes it through the local broker."""

    def __init__(self, broker: Broker, channel_prefix: str) -> None:
        self.broker = broker
        self.node_id = broker.node_id
        self.channel_prefix = channel_prefix
        self.listeners: list[RelayListener] = []
        #: Records routed here from other servers (or this one's chat), for metrics.
        self.routed_count = 0

    def received(self, channel: bytes | str, payload: bytes | str) -> None:
        """A relayed payload: route each record to this server's subscribers."""
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8")
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if not channel.startswith(self.channel_prefix):
            return
        key = channel[len(self.channel_prefix) :]
        shown = key
        if key.startswith(USER_PREFIX):
            shown = USER_PREFIX + key[len(USER_PREFIX) :].partition("/")[2]
        try:
            for origin, local, headers, body in decode_envelopes(payload):
                if origin == self.node_id and not local:
                    continue  # published here, and already delivered here
                self.routed_count += 1
                message = Message(shown, self.broker.new_message_id(), body, headers)
                self.broker.route(key, message)
                for listener in self.listeners:
                    listener(key, origin, body)
        except ValueError:
            log.warn("ignoring a malformed relayed payload on {channel}", channel=channel)
