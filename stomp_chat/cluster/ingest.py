"""Ingestion: relayed payloads become deliveries to this server's subscribers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.logger import Logger

from stomp_chat.broker import USER_PREFIX, Broker, Message
from stomp_chat.cluster.envelope import Record, decode_envelopes
from stomp_chat.cluster.follow import FollowedRoom

log = Logger()

#: Told of every relayed message: (routing key, origin node, body).
RelayListener = Callable[[str, str, bytes], object]


class ReadBatch(Protocol):
    """Brackets the handling of one read of relayed messages, so that what it makes each
    client connection write goes out in one write when it ends (the server's
    stomp_chat.transport.stomp.OutputBatch)."""

    def begin(self) -> None: ...

    def end(self) -> None: ...


class Ingestion:
    """Decodes what arrives on a channel and routes it through the local broker."""

    def __init__(self, broker: Broker, channel_prefix: str) -> None:
        self.broker = broker
        self.node_id = broker.node_id
        self.channel_prefix = channel_prefix
        self.listeners: list[RelayListener] = []
        #: Records routed here from other servers (or this one's chat), for metrics.
        self.routed_count = 0
        #: The room channels followed here, by routing key and by room id.
        self.followed: dict[str, FollowedRoom] = {}
        self.rooms: dict[int, FollowedRoom] = {}

    def follow(self, room: FollowedRoom) -> None:
        self.followed[room.key] = room
        self.rooms[room.room_id] = room

    def unfollow(self, key: str) -> None:
        room = self.followed.pop(key, None)
        if room is not None and self.rooms.get(room.room_id) is room:
            del self.rooms[room.room_id]

    def received(self, channel: bytes | str, payload: bytes | str) -> None:
        """A relayed payload: route each record to this server's subscribers."""
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8")
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        if not channel.startswith(self.channel_prefix):
            return
        key = channel[len(self.channel_prefix) :]
        followed = self.followed.get(key)
        try:
            for record in decode_envelopes(payload):
                if record[0] == self.node_id and not record[1]:
                    continue  # published here, and already delivered here
                if followed is not None and record[3] is not None:
                    followed.offer(record)  # delivered once, in seq order
                else:
                    self.deliver(key, record)
        except ValueError:
            log.warn("ignoring a malformed relayed payload on {channel}", channel=channel)

    def deliver(self, key: str, record: Record) -> None:
        """Route one record to the local subscribers of ``key`` and tell the listeners."""
        origin, _, headers, _, body = record
        shown = key
        if key.startswith(USER_PREFIX):
            shown = USER_PREFIX + key[len(USER_PREFIX) :].partition("/")[2]
        self.routed_count += 1
        self.broker.route(key, Message(shown, self.broker.new_message_id(), body, headers))
        for listener in self.listeners:
            try:
                listener(key, origin, body)
            except Exception:
                # One listener failing must not lose the payload's other records, nor the
                # other replies of the same read from Redis.
                log.failure("a listener of relayed {key} failed", key=key)
