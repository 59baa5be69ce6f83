"""Cluster mode: several server processes share destinations through Redis.

Each process keeps its own broker and relays what it publishes to the
others over Redis pub/sub; ``/queue/`` destinations are not relayed: they
live in Redis streams (stomp_chat.cluster.streams), where a consumer group
gives each message one owner. Chat messages are numbered and
published by Redis in one step (see stomp_chat.cluster.batching), and every
process, the sender's included, delivers them from the pub/sub stream.

A process SUBSCRIBEs to a destination's channel only while it has local
subscribers for it (the broker tells it of the first and the last), so a
process receives no traffic for rooms nobody follows there. A plain topic's
messages published before Redis confirms such a subscription (about one
round trip after the first local SUBSCRIBE) are not delivered; a chat room
loses nothing after the counter it read on subscribing (stomp_chat.cluster.follow).

The relay composes the seams: the envelope codec, the two Redis links and
their state machine, per-turn batching and ingestion.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred,
    fail,
    gatherResults,
    inlineCallbacks,
    succeed,
)
from twisted.logger import Logger

from stomp_chat.broker import QUEUE_PREFIX, Broker, Message
from stomp_chat.cluster.address import RedisAddress
from stomp_chat.cluster.batching import DEFAULT_RECENT_SIZE, ChatEntry, TurnBatch
from stomp_chat.cluster.envelope import decode_envelope, encode_envelope, meta_prefix
from stomp_chat.cluster.follow import FollowedRoom, RecentUnavailable, bodies_of
from stomp_chat.cluster.ingest import Ingestion, ReadBatch, RelayListener
from stomp_chat.cluster.linkstate import Link

log = Logger()

#: How many chat rooms' Redis key names are kept ready (the cache starts over beyond).
ROOM_KEYS_CACHED = 10_000


class RedisUnavailable(Exception):
    """Redis cannot be reached: cluster-wide work cannot be done now."""


class RedisRelay(Service):
    """Relays a broker's messages to and from the other processes."""

    def __init__(
        self,
        broker: Broker,
        address: RedisAddress,
        reactor: Any,
        reply_timeout: float = 5.0,
        *,
        room_of: Callable[[str], int | None] | None = None,
        recent_size: int = DEFAULT_RECENT_SIZE,
        max_retry: float = 10.0,
        read_batch: ReadBatch | None = None,
    ) -> None:
        self.broker = broker
        #: Brackets each read of relayed messages (the server's OutputBatch), so their
        #: deliveries reach each client connection in one write.
        self.read_batch = read_batch
        #: Which routing keys are chat rooms (numbered, followed by seq), and their ids.
        self.room_of = room_of
        self.address = address
        self.reactor = reactor
        self.reply_timeout = reply_timeout
        #: The longest wait between two attempts to reconnect (back-off doubles up to it).
        self.max_retry = max_retry
        self.node_id = broker.node_id
        self.channel_prefix = f"{address.namespace}:"
        self.sequence_key = f"{address.namespace}:seq:{{room_id}}"
        self.recent_key = f"{address.namespace}:recent:{{room_id}}"
        self.recent_size = recent_size
        self.ingestion = Ingestion(broker, self.channel_prefix)
        self.batch = TurnBatch(reactor, self._publish, self._eval, recent_size)
        #: Routing keys with local subscribers: their channels are subscribed.
        self.wanted: set[str] = set()
        #: Wanted keys whose subscription Redis has confirmed on the current connection.
        self.subscribed: set[str] = set()
        self.commands_link = Link("commands", self._commands_up, self._link_down)
        self.subscriber_link = Link("subscriber", self._subscriber_up, self._subscriber_down)
        self._commands: Any = None
        self._subscriber: Any = None
        #: Each chat room's counter key and recent list, by room id (a bounded cache).
        self._room_keys: dict[int, tuple[str, str]] = {}
        #: The last headers a chat message had, and their record metadata.
        self._meta_headers: dict[str, str] | None = None
        self._meta = b""
        #: Told each time the commands link comes up (again).
        self.up_listeners: list[Callable[[], object]] = []
        self._is_ready = False
        self._ready_waiters: list[Deferred[None]] = []
        self._outage_reported = False

    @property
    def listeners(self) -> list[RelayListener]:
        """Told of every relayed message: (routing key, origin node, body)."""
        return self.ingestion.listeners

    @property
    def connected(self) -> bool:
        """Whether commands can be sent to Redis right now."""
        return self.commands_link.is_up

    @property
    def degraded(self) -> str | None:
        """Why relaying is not whole now (a link is down), or None."""
        down = [link.name for link in (self.commands_link, self.subscriber_link)
                if not link.is_up]
        return f"{' and '.join(down)} link down" if down else None

    def commands(self) -> Any:
        """The commands link's client, for cluster features that talk to Redis."""
        if self._commands is None:
            raise RedisUnavailable("the relay is not started")
        return self._commands.handler

    def ping(self) -> Deferred[Any]:
        """PING over the commands link: how health checks time Redis."""
        if self._commands is None:
            raise RedisUnavailable("the relay is not started")
        return self._commands.handler.ping()  # type: ignore[no-any-return]

    def ready(self) -> Deferred[None]:
        """Fires once both links have been up: commands go out and channels can be
        subscribed."""
        if self._is_ready:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._ready_waiters.append(d)
        return d

    # -- lifecycle -----------------------------------------------------

    def startService(self) -> None:
        from stomp_chat.cluster import links  # imports the reactor: only once running

        super().startService()
        self._commands = links.connect_commands(
            self.address, self.reactor, self.commands_link, self.reply_timeout, self.max_retry
        )
        self._subscriber = links.connect_subscriber(
            self.address, self.reactor, self.subscriber_link, self.ingestion.received,
            self.max_retry, read_batch=self.read_batch,
        )
        self.broker.published_listeners.append(self.published)
        self.broker.interest_listeners.append(self.interest)
        for key in self.broker.wanted_keys():
            self.interest(key, True)

    @inlineCallbacks
    def stopService(self) -> Generator[Deferred[Any], Any, None]:
        super().stopService()
        if self.published in self.broker.published_listeners:
            self.broker.published_listeners.remove(self.published)
        if self.interest in self.broker.interest_listeners:
            self.broker.interest_listeners.remove(self.interest)
        self.batch.flush_now()
        # Messages Redis is numbering may already be broadcast: let their
        # seq come back so that this server stores them before it stops.
        yield self.batch.settled()
        self.commands_link.stop()
        self.subscriber_link.stop()
        waits = [f.disconnect() for f in (self._commands, self._subscriber) if f is not None]
        if waits:
            yield gatherResults(waits, consumeErrors=True)

    def disconnect_now(self) -> None:
        """Drop both connections without waiting for anything (a test's last resort)."""
        for factory in (self._commands, self._subscriber):
            if factory is not None:
                factory.disconnect()

    def _commands_up(self, protocol: Any) -> None:
        for key, room in list(self.ingestion.followed.items()):
            if room.delivered_through is None:
                self._follow(key, room)  # waited for the commands link to read the counter
            else:
                room.resume()  # a fill that waited for the commands link
        for listener in list(self.up_listeners):
            try:
                listener()
            except Exception:
                log.failure("a listener of the commands link failed")
        self._link_up()

    def _subscriber_up(self, protocol: Any) -> None:
        self.subscribed.clear()
        for key in sorted(self.wanted):
            room = self.ingestion.followed.get(key)
            if room is None or room.delivered_through is not None:
                self._subscribe(key)
        self._link_up()

    def _subscriber_down(self) -> None:
        self.subscribed.clear()
        for room in self.ingestion.followed.values():
            room.lost()
        self._link_down()

    # -- what this server listens to -----------------------------------

    def interest(self, key: str, wanted: bool) -> None:
        """The broker's first subscriber for ``key`` arrived, or its last one left."""
        if key.startswith(QUEUE_PREFIX):
            return
        if not wanted:
            self.wanted.discard(key)
            self.ingestion.unfollow(key)
            self.subscribed.discard(key)
            protocol = self.subscriber_link.protocol
            if protocol is not None:
                protocol.unsubscribe(self.channel_prefix + key).addErrback(
                    self._subscribe_failed, key
                )
            return
        if key in self.wanted:
            return
        self.wanted.add(key)
        room_id = self.room_of(key) if self.room_of is not None else None
        if room_id is None:
            self._subscribe(key)
            return
        room = FollowedRoom(key, room_id, self.ingestion.deliver, self._fetch_recent)
        self.ingestion.follow(room)
        self._follow(key, room)

    def _follow(self, key: str, room: FollowedRoom) -> None:
        """Read the room's counter, then subscribe: what is numbered after it arrives."""
        if not self.commands_link.is_up:
            return  # again once the commands link is up
        counter = self._commands.handler.get(self.sequence_key.format(room_id=room.room_id))

        def read(value: Any) -> None:
            if self.ingestion.followed.get(key) is not room:
                return  # no longer wanted, or wanted anew since
            room.start(int(value) if value is not None else 0)
            self._subscribe(key)

        def failed(failure: Any) -> None:
            log.warn("cannot read the counter of chat room {room}: {error}; following it "
                     "once Redis is back", room=room.room_id, error=failure.getErrorMessage())

        counter.addCallbacks(read, failed)

    def _subscribe(self, key: str) -> None:
        protocol = self.subscriber_link.protocol
        if protocol is None:
            return  # subscribed with the others once the link is up
        d = protocol.subscribe(self.channel_prefix + key)
        d.addCallbacks(self._confirmed, self._subscribe_failed,
                       callbackArgs=(key, protocol), errbackArgs=(key,))

    def _confirmed(self, _: object, key: str, protocol: Any) -> None:
        if key not in self.wanted or protocol is not self.subscriber_link.protocol:
            return
        self.subscribed.add(key)
        room = self.ingestion.followed.get(key)
        if room is not None:
            room.confirmed()

    def follows(self, room_id: int) -> bool:
        """Whether every message of the room reaches this server now (a live follow)."""
        room = self.ingestion.rooms.get(room_id)
        return room is not None and room.live

    def recent(self, room_id: int) -> Deferred[list[bytes]]:
        """The bodies of the room's last messages, oldest first, from the recent list."""
        return self._fetch_recent(room_id).addCallback(bodies_of)

    def forget(self, room_id: int, seq: int) -> Deferred[None]:
        """Remove a deleted message's record from the room's recent list."""
        key = self.recent_key.format(room_id=room_id)

        def remove(records: list[bytes]) -> Any:
            for raw in records:
                try:
                    numbered = decode_envelope(raw)[3]
                except ValueError:
                    continue
                if numbered == seq:
                    return self.commands().lrem(key, 1, raw).addCallback(lambda _: None)
            return None

        return self._fetch_recent(room_id).addCallback(remove)

    def _fetch_recent(self, room_id: int) -> Deferred[list[bytes]]:
        if not self.commands_link.is_up:
            return fail(RecentUnavailable("the commands link is down"))
        return self._commands.handler.lrange(  # type: ignore[no-any-return]
            self.recent_key.format(room_id=room_id), 0, -1
        )

    def _link_up(self) -> None:
        if not (self.commands_link.is_up and self.subscriber_link.is_up):
            return
        if self._outage_reported:
            log.info("relaying through {redis} again", redis=self.address.redacted())
            self._outage_reported = False
        if not self._is_ready:
            self._is_ready = True
            waiters, self._ready_waiters = self._ready_waiters, []
            for waiter in waiters:
                waiter.callback(None)  # a waiter that timed out ignores this

    def _link_down(self) -> None:
        if self.running:
            self._report_outage("connection lost")

    def _subscribe_failed(self, failure: Any, key: str) -> None:
        if self.running:
            log.warn("cannot (un)subscribe {key} at {redis}: {error}", key=key,
                     redis=self.address.redacted(), error=failure.getErrorMessage())

    def _report_outage(self, error: str) -> None:
        if not self._outage_reported:
            self._outage_reported = True
            log.error("Redis at {redis} is unavailable: {error}; chat messages are refused "
                      "until it is back", redis=self.address.redacted(), error=error)

    # -- out -----------------------------------------------------------

    # The relay's own commands go straight to the ready connection: txredisapi's
    # handler would first find it in its pool through an inlineCallbacks generator
    # and several Deferreds, which cost more than the command itself at a low rate
    # (one call per chat message). With no ready connection they fail at once, as a
    # chat message does when Redis is unreachable.

    def _publish(self, channel: str, payload: bytes) -> Deferred[Any]:
        return self._on_connection("publish", channel, payload)

    def _eval(self, script: str, args: list[Any]) -> Deferred[Any]:
        return self._on_connection("eval", script, [], args)

    def _on_connection(self, command: str, *args: Any) -> Deferred[Any]:
        protocol = self.commands_link.protocol
        if protocol is None:
            return fail(RedisUnavailable("the commands link is down"))
        if protocol.inTransaction or protocol.pipelining:
            # another user of commands() holds the connection (MULTI, WATCH, a
            # pipeline): wait for it through the handler, which keeps that order
            return getattr(self._commands.handler, command)(*args)  # type: ignore[no-any-return]
        try:
            return getattr(protocol, command)(*args)  # type: ignore[no-any-return]
        except Exception:  # txredisapi refuses at once on a connection that just dropped
            return fail()

    def published(self, key: str, message: Message) -> None:
        """A local publish (already delivered locally): tell the others."""
        if key.startswith(QUEUE_PREFIX) or self._commands is None:
            return
        if not self.connected:
            self._report_outage("not connected")
            return
        record = encode_envelope(self.node_id, False, message.headers, message.body)
        self.batch.add_record(self.channel_prefix + key, record)

    def sequence_and_publish(
        self,
        room_id: int,
        key: str,
        headers: dict[str, str],
        template: bytes,
        placeholder: bytes,
        floor: int,
        durable_floor: Callable[[int], Deferred[int]] | None = None,
    ) -> Deferred[int]:
        """Number a chat message and publish it to every server, this one included.

        Redis puts the seq where `template` holds `placeholder`. Fails at once
        while Redis is unreachable: the message is refused rather than queued
        for a publication the sender was not told about. `durable_floor` reads
        the highest seq the database holds or reserves for the room, for when
        Redis has lost the room's counter.
        """
        if not placeholder:
            raise ValueError("the seq placeholder must not be empty")
        if not self.connected:
            self._report_outage("not connected")
            return fail(RedisUnavailable(f"Redis at {self.address.redacted()} is unreachable"))
        keys = self._room_keys.get(room_id)
        if keys is None:
            if len(self._room_keys) >= ROOM_KEYS_CACHED:
                self._room_keys.clear()
            keys = self._room_keys[room_id] = (
                self.sequence_key.format(room_id=room_id), self.recent_key.format(room_id=room_id)
            )
        if headers != self._meta_headers:
            self._meta = meta_prefix(self.node_id, True, headers)
            self._meta_headers = dict(headers)
        d: Deferred[int] = Deferred()
        self.batch.add_chat(ChatEntry(
            room_id, keys[0], keys[1], self.channel_prefix + key, floor, self._meta, template,
            placeholder, d, durable_floor,
        ))
        return d

    # -- in ------------------------------------------------------------

    def received(self, channel: bytes | str, payload: bytes | str) -> None:
        """A relayed payload: route it to this server's subscribers."""
        self.ingestion.received(channel, payload)
