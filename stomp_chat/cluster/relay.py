"""Cluster mode: several server processes share destinations through Redis.

Each process keeps its own broker and relays what it publishes to the
others over Redis pub/sub; every process pattern-subscribes to all
relayed channels, so a subscription made on one process never races the
Redis subscription that would feed it. ``/queue/`` destinations stay local
to a process (competing consumers need one owner).

Chat rooms need one order that every process agrees on, and sequence
numbers without gaps: a chat message is numbered and published by one
Redis script (INCR, then PUBLISH), atomically, so the order of the pub/sub
stream *is* the order of ``seq``, and every process, the sender's included,
delivers chat messages from that stream.

This is the only module that imports txredisapi (which needs the reactor).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    fail,
    gatherResults,
    inlineCallbacks,
    succeed,
)
from twisted.logger import Logger

from stomp_chat.broker import QUEUE_PREFIX, USER_PREFIX, Broker, Message

log = Logger()

DEFAULT_NAMESPACE = "stomp-chat"

#: Number chat messages and publish them, in one atomic step. Per message,
#: ARGV holds: the room's counter key, ``floor`` (the highest seq the caller
#: knows of), whether that floor was just read from the database, the
#: channel, the record's metadata up to the body length, and the body
#: template. Each channel gets one PUBLISH with all its records, in order.
#:
#: Redis keeps nothing on disk: a counter that is missing was lost (or never
#: made), and one server's memory is no safe floor for it (that server may
#: have missed messages). Such a message gets seq -1 and is not published;
#: its server reads the floor from the database and sends it again.
_SEQUENCE_AND_PUBLISH = """
local n = tonumber(ARGV[1])
local seqs = {}
local records = {}
local channels = {}
for i = 0, n - 1 do
  local b = 2 + i * 6
  local seq = -1
  if ARGV[b + 2] == '1' or redis.call('EXISTS', ARGV[b]) == 1 then
    seq = redis.call('INCR', ARGV[b])
    local floor = tonumber(ARGV[b + 1])
    if seq <= floor then
      seq = floor + 1
      redis.call('SET', ARGV[b], seq)
    end
    -- the NULs of the template (see stomp_chat.app.chat.SEQ_PLACEHOLDER) become seq
    local body = string.gsub(ARGV[b + 5], '%z', tostring(seq))
    local channel = ARGV[b + 3]
    if records[channel] == nil then
      records[channel] = {}
      channels[#channels + 1] = channel
    end
    table.insert(records[channel], ARGV[b + 4] .. #body .. ']\\n' .. body)
  end
  seqs[#seqs + 1] = seq
end
for _, channel in ipairs(channels) do
  redis.call('PUBLISH', channel, table.concat(records[channel]))
end
return seqs
"""

#: The seq the script answers for a message whose counter Redis lost.
_NEEDS_FLOOR = -1


@dataclass(slots=True)
class _ChatEntry:
    """A chat message waiting for Redis to number it."""

    room_id: int
    seq_key: str
    floor: int
    channel: str
    meta: bytes
    template: bytes
    deferred: Deferred[int]
    durable_floor: Callable[[int], Deferred[int]] | None
    #: Whether `floor` was read from the database just now.
    fresh: bool = False


#: The most chat messages numbered by one script call.
MAX_SCRIPT_BATCH = 500



@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str
    port: int
    db: int | None
    password: str | None
    #: Prefix of every channel and key: one Redis can serve several clusters
    #: (pub/sub channels are shared by all Redis databases).
    namespace: str = DEFAULT_NAMESPACE

    def redacted(self) -> str:
        db = f"/{self.db}" if self.db is not None else ""
        return f"redis://{self.host}:{self.port}{db}?namespace={self.namespace}"


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[:password@]host[:port][/db][?namespace=name]``.

    Raises ValueError saying what is wrong.
    """
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError(f"Redis URLs look like redis://host:port/db, not {url!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"invalid port in Redis URL {url!r}") from None
    if port is None:
        port = 6379
    elif port == 0:
        raise ValueError(f"invalid port 0 in Redis URL {url!r}")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the database in a Redis URL is a number, not {path!r}")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"namespace"}
    if unknown:
        raise ValueError(f"unknown Redis URL option(s): {', '.join(sorted(unknown))}")
    namespace = query.get("namespace", [DEFAULT_NAMESPACE])[-1]
    if not namespace or not all(c.isalnum() or c in "-_." for c in namespace):
        raise ValueError("the Redis namespace is letters, digits, '-', '_' and '.'")
    return RedisAddress(parts.hostname or "127.0.0.1", port, int(path) if path else None,
                        parts.password, namespace)


def _meta_prefix(origin: str, local: bool, headers: dict[str, str]) -> bytes:
    """A record's metadata up to its body length: ``[origin,local,headers,``."""
    meta = json.dumps([origin, local, headers], separators=(",", ":"), ensure_ascii=False)
    return meta[:-1].encode("utf-8") + b","


def encode_envelope(origin: str, local: bool, headers: dict[str, str], body: bytes) -> bytes:
    """One relayed message: ``[origin,local,headers,length]``, LF, then the body.

    A payload on a channel is one or more of these back to back: messages
    published in one reactor turn cross Redis together.
    """
    return _meta_prefix(origin, local, headers) + b"%d]\n" % len(body) + body


def decode_envelopes(payload: bytes) -> Iterator[tuple[str, bool, dict[str, str], bytes]]:
    """The records of a payload; ValueError at the first that is not what we send."""
    pos, end = 0, len(payload)
    while pos < end:
        newline = payload.find(b"\n", pos)
        if newline < 0:
            raise ValueError("no metadata line")
        meta = json.loads(payload[pos:newline])
        if not (isinstance(meta, list) and len(meta) == 4):
            raise ValueError("metadata is not [origin, local, headers, length]")
        origin, local, headers, length = meta
        if not (
            isinstance(origin, str)
            and isinstance(local, bool)
            and isinstance(headers, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
            and isinstance(length, int)
            and not isinstance(length, bool)
            and 0 <= length <= end - newline - 1
        ):
            raise ValueError("metadata has the wrong types")
        pos = newline + 1 + length
        yield origin, local, headers, payload[newline + 1 : pos]


def decode_envelope(payload: bytes) -> tuple[str, bool, dict[str, str], bytes]:
    """The single record of a payload."""
    records = list(decode_envelopes(payload))
    if len(records) != 1:
        raise ValueError(f"expected one record, found {len(records)}")
    return records[0]


def _no_delay(transport: Any) -> None:
    """Small commands and messages must not wait for Nagle's algorithm."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        set_no_delay(True)


class RedisUnavailable(Exception):
    """Redis cannot be reached: cluster-wide work cannot be done now."""


#: Told of every relayed chat message: (routing key, origin node, body).
RelayListener = Callable[[str, str, bytes], object]


class RedisRelay(Service):
    """Relays a broker's messages to and from the other processes."""

    def __init__(
        self,
        broker: Broker,
        address: RedisAddress,
        reactor: Any,
        reply_timeout: float = 5.0,
    ) -> None:
        self.broker = broker
        self.address = address
        self.reactor = reactor
        self.reply_timeout = reply_timeout
        self.node_id = broker.node_id
        self.channel_prefix = f"{address.namespace}:"
        self.sequence_key = f"{address.namespace}:seq:{{room_id}}"
        self.listeners: list[RelayListener] = []
        self._commands: Any = None
        self._command_factory: Any = None
        self._subscriber: Any = None
        #: Chat messages sent to Redis whose seq has not come back yet.
        self._sequencing: set[Deferred[Any]] = set()
        #: What this reactor turn relays, sent together at its end: chat
        #: messages to number, and other records by channel.
        self._chat_batch: list[_ChatEntry] = []
        #: Rooms whose counter Redis lost, by counter key: messages parked while the
        #: floor is read from the database, in arrival order.
        self._awaiting_floor: dict[str, list[_ChatEntry]] = {}
        self._raw_batch: dict[str, list[bytes]] = {}
        self._flush_call: Any = None
        self._is_ready = False
        self._ready_waiters: list[Deferred[None]] = []
        #: Which of the two Redis connections have come up at least once.
        self._links: set[str] = set()
        self._commands_up = False
        self._outage_reported = False

    @property
    def connected(self) -> bool:
        """Whether commands can be sent to Redis right now."""
        return self._commands_up

    def ping(self) -> Deferred[Any]:
        """PING over the commands link: how health checks time Redis."""
        if self._commands is None:
            raise RedisUnavailable("the relay is not started")
        return self._commands.ping()  # type: ignore[no-any-return]

    def ready(self) -> Deferred[None]:
        """Fires when this server receives relayed messages."""
        if self._is_ready:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._ready_waiters.append(d)
        return d

    # -- lifecycle -----------------------------------------------------

    def startService(self) -> None:
        import txredisapi
        from twisted.internet.endpoints import HostnameEndpoint

        super().startService()
        address = self.address
        endpoint = HostnameEndpoint(self.reactor, address.host, address.port, timeout=5)
        relay = self

        class Commands(txredisapi.RedisProtocol):  # type: ignore[misc]
            def connectionMade(self) -> Any:
                _no_delay(self.transport)
                d = super().connectionMade()
                if isinstance(d, Deferred):
                    d.addCallback(relay._commands_connected)
                else:
                    relay._commands_connected(None)
                return d

            def connectionLost(self, reason: Any) -> Any:
                relay._commands_up = False
                return super().connectionLost(reason)

        commands = txredisapi.RedisFactory(
            address.redacted(), address.db, 1, isLazy=True, charset=None,
            password=address.password, replyTimeout=self.reply_timeout,
        )
        commands.protocol = Commands
        commands.startConnecting(endpoint)
        self._command_factory = commands
        self._commands = commands.handler

        class Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
            def connectionMade(self) -> Any:
                _no_delay(self.transport)
                d = super().connectionMade()
                subscribed = self.psubscribe(relay.channel_prefix + "*")
                subscribed.addCallbacks(relay._subscribed, relay._subscribe_failed)
                return d

            def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
                relay.received(channel, message)

        subscriber = txredisapi.SubscriberFactory(isLazy=True)
        subscriber.protocol = Subscriber
        subscriber.charset = None  # bodies are bytes, not always UTF-8
        subscriber.convertNumbers = False
        subscriber.password = address.password
        subscriber.startConnecting(endpoint)
        self._subscriber = subscriber
        self.broker.published_listeners.append(self.published)

    @inlineCallbacks
    def stopService(self) -> Generator[Deferred[Any], Any, None]:
        super().stopService()
        if self.published in self.broker.published_listeners:
            self.broker.published_listeners.remove(self.published)
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
            self.flush()
        # Messages Redis is numbering may already be broadcast: let their
        # seq come back so that this server stores them before it stops.
        if self._sequencing:
            yield DeferredList(list(self._sequencing))
        waits = []
        if self._commands is not None:
            waits.append(self._commands.disconnect())
        if self._subscriber is not None:
            waits.append(self._subscriber.disconnect())
        if waits:
            yield gatherResults(waits, consumeErrors=True)

    def _commands_connected(self, result: object) -> object:
        self._commands_up = True
        self._links.add("commands")
        self._link_up()
        return result

    def _subscribed(self, _: object) -> None:
        self._links.add("subscriber")
        self._link_up()

    def _link_up(self) -> None:
        if self._links != {"commands", "subscriber"}:
            return
        if self._outage_reported:
            log.info("relaying through {redis} again", redis=self.address.redacted())
            self._outage_reported = False
        if not self._is_ready:
            self._is_ready = True
            waiters, self._ready_waiters = self._ready_waiters, []
            for waiter in waiters:
                waiter.callback(None)  # a waiter that timed out ignores this

    def _subscribe_failed(self, failure: Any) -> None:
        log.error("cannot subscribe to relayed messages at {redis}: {error}",
                  redis=self.address.redacted(), error=failure.getErrorMessage())

    def _report_outage(self, error: str) -> None:
        if not self._outage_reported:
            self._outage_reported = True
            log.error("Redis at {redis} is unavailable: {error}; chat messages are refused "
                      "until it is back", redis=self.address.redacted(), error=error)

    # -- out -----------------------------------------------------------

    def published(self, key: str, message: Message) -> None:
        """A local publish (already delivered locally): tell the others."""
        if key.startswith(QUEUE_PREFIX) or self._commands is None:
            return
        if not self.connected:
            self._report_outage("not connected")
            return
        record = encode_envelope(self.node_id, False, message.headers, message.body)
        self._raw_batch.setdefault(self.channel_prefix + key, []).append(record)
        self._schedule_flush()

    def _publish_failed(self, failure: Any, channel: str) -> None:
        log.warn("could not relay messages on {channel} to other servers: {error}",
                 channel=channel, error=failure.getErrorMessage())

    def _schedule_flush(self) -> None:
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """Send what this turn relays: one PUBLISH per channel, one script call
        per few hundred chat messages (Redis round trips, not messages, cost)."""
        self._flush_call = None
        raw, self._raw_batch = self._raw_batch, {}
        for channel, records in raw.items():
            d = self._commands.publish(channel, b"".join(records))
            d.addErrback(self._publish_failed, channel)
        chat, self._chat_batch = self._chat_batch, []
        for start in range(0, len(chat), MAX_SCRIPT_BATCH):
            chunk = chat[start : start + MAX_SCRIPT_BATCH]
            args: list[Any] = [len(chunk)]
            for entry in chunk:
                args += [entry.seq_key, entry.floor, "1" if entry.fresh else "0",
                         entry.channel, entry.meta, entry.template]
            numbered = self._commands.eval(_SEQUENCE_AND_PUBLISH, [], args)
            numbered.addCallbacks(
                self._numbered, self._not_numbered, callbackArgs=(chunk,), errbackArgs=(chunk,)
            )

    def _numbered(self, seqs: list[Any], chunk: list[_ChatEntry]) -> None:
        for entry, seq in zip(chunk, seqs, strict=True):
            if int(seq) == _NEEDS_FLOOR:
                self._park_for_floor(entry)
            else:
                entry.deferred.callback(int(seq))

    def _not_numbered(self, failure: Any, chunk: list[_ChatEntry]) -> None:
        for entry in chunk:
            entry.deferred.errback(failure)

    def _park_for_floor(self, entry: _ChatEntry) -> None:
        """Redis lost the room's counter: read the durable floor once, then number the
        room's parked messages, in order, from above it."""
        parked = self._awaiting_floor.get(entry.seq_key)
        if parked is not None:
            parked.append(entry)
            return
        self._awaiting_floor[entry.seq_key] = [entry]
        if entry.durable_floor is None:
            self._floor_read(entry.floor, entry.seq_key)
            return
        log.info("the seq counter of chat room {room} is missing from Redis; reading its "
                 "floor from the database", room=entry.room_id)
        reading = entry.durable_floor(entry.room_id)
        reading.addCallbacks(self._floor_read, self._floor_failed, callbackArgs=(entry.seq_key,),
                             errbackArgs=(entry.seq_key,))

    def _floor_read(self, floor: int, seq_key: str) -> None:
        for entry in self._awaiting_floor.pop(seq_key, []):
            entry.floor = max(entry.floor, floor)
            entry.fresh = True
            self._chat_batch.append(entry)
        self._schedule_flush()

    def _floor_failed(self, failure: Any, seq_key: str) -> None:
        log.warn("cannot read a chat room's seq floor: {error}", error=failure.getErrorMessage())
        for entry in self._awaiting_floor.pop(seq_key, []):
            entry.deferred.errback(failure)

    def sequence_and_publish(
        self,
        room_id: int,
        key: str,
        headers: dict[str, str],
        template: bytes,
        floor: int,
        durable_floor: Callable[[int], Deferred[int]] | None = None,
    ) -> Deferred[int]:
        """Number a chat message and publish it to every server, this one included.

        Fails at once while Redis is unreachable: the message is refused
        rather than queued for a publication the sender was not told about.
        `durable_floor` reads the highest seq the database holds or reserves
        for the room, for when Redis has lost the room's counter.
        """
        if not self.connected:
            self._report_outage("not connected")
            return fail(RedisUnavailable(f"Redis at {self.address.redacted()} is unreachable"))
        d: Deferred[int] = Deferred()
        seq_key = self.sequence_key.format(room_id=room_id)
        entry = _ChatEntry(room_id, seq_key, floor, self.channel_prefix + key,
                           _meta_prefix(self.node_id, True, headers), template, d, durable_floor)
        parked = self._awaiting_floor.get(seq_key)
        if parked is not None:
            parked.append(entry)  # behind the messages waiting for the same floor
        else:
            self._chat_batch.append(entry)
        self._sequencing.add(d)
        d.addBoth(self._sequenced, d)
        self._schedule_flush()
        return d

    def _sequenced(self, result: Any, d: Deferred[Any]) -> Any:
        self._sequencing.discard(d)
        return result

    # -- in ------------------------------------------------------------

    def received(self, channel: bytes | str, payload: bytes | str) -> None:
        """A relayed message: route it to this server's subscribers."""
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8")
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        key = channel[len(self.channel_prefix) :]
        shown = key
        if key.startswith(USER_PREFIX):
            shown = USER_PREFIX + key[len(USER_PREFIX) :].partition("/")[2]
        try:
            for origin, local, headers, body in decode_envelopes(payload):
                if origin == self.node_id and not local:
                    continue  # published here, and already delivered here
                message = Message(shown, self.broker.new_message_id(), body, headers)
                self.broker.route(key, message)
                for listener in self.listeners:
                    listener(key, origin, body)
        except ValueError:
            log.warn("ignoring a malformed relayed payload on {channel}", channel=channel)
