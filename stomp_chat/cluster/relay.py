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
from collections.abc import Callable, Generator
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

#: Number a room's message and publish it, in one atomic step. ``floor`` is
#: the highest seq the caller has seen: Redis keeps nothing on disk, and a
#: counter lost in a restart must not hand out a seq twice.
_SEQUENCE_AND_PUBLISH = """
local seq = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[3])
if seq <= floor then
  seq = floor + 1
  redis.call('SET', KEYS[1], seq)
end
local body = string.gsub(ARGV[2], '%z', tostring(seq))
redis.call('PUBLISH', KEYS[2], ARGV[1] .. body)
return seq
"""

#: Marks the places of ``seq`` in a chat message template (JSON escapes
#: every control character, so a NUL can only be a placeholder).
SEQ_PLACEHOLDER = b"\x00"


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


def encode_envelope(origin: str, local: bool, headers: dict[str, str], body: bytes) -> bytes:
    """What crosses Redis: a JSON line of metadata, then the body bytes."""
    meta = json.dumps([origin, local, headers], separators=(",", ":"), ensure_ascii=False)
    return meta.encode("utf-8") + b"\n" + body


def decode_envelope(payload: bytes) -> tuple[str, bool, dict[str, str], bytes]:
    """Split a relayed payload; ValueError unless it is exactly what we send."""
    end = payload.find(b"\n")
    if end < 0:
        raise ValueError("no metadata line")
    meta = json.loads(payload[:end])
    if not (isinstance(meta, list) and len(meta) == 3):
        raise ValueError("metadata is not [origin, local, headers]")
    origin, local, headers = meta
    if not (
        isinstance(origin, str)
        and isinstance(local, bool)
        and isinstance(headers, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    ):
        raise ValueError("metadata has the wrong types")
    return origin, local, headers, payload[end + 1 :]


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
        self._is_ready = False
        self._ready_waiters: list[Deferred[None]] = []
        self._outage_reported = False

    @property
    def connected(self) -> bool:
        """Whether commands can be sent to Redis right now."""
        return self._command_factory is not None and self._command_factory.size > 0

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
        commands = txredisapi.RedisFactory(
            address.redacted(), address.db, 1, isLazy=True, charset=None,
            password=address.password, replyTimeout=self.reply_timeout,
        )
        commands.startConnecting(endpoint)
        self._command_factory = commands
        self._commands = commands.handler
        relay = self

        class Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
            def connectionMade(self) -> Any:
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

    def _subscribed(self, _: object) -> None:
        if self._outage_reported:
            log.info("relaying through {redis} again", redis=self.address.redacted())
            self._outage_reported = False
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
        payload = encode_envelope(self.node_id, False, message.headers, message.body)
        d = self._commands.publish(self.channel_prefix + key, payload)
        d.addErrback(self._publish_failed, key)

    def _publish_failed(self, failure: Any, key: str) -> None:
        log.warn("could not relay a message for {key} to other servers: {error}",
                 key=key, error=failure.getErrorMessage())

    def sequence_and_publish(
        self,
        room_id: int,
        key: str,
        headers: dict[str, str],
        template: bytes,
        floor: int,
    ) -> Deferred[int]:
        """Number a chat message and publish it to every server, this one included.

        Fails at once while Redis is unreachable: the message is refused
        rather than queued for a publication the sender was not told about.
        """
        if not self.connected:
            self._report_outage("not connected")
            return fail(RedisUnavailable(f"Redis at {self.address.redacted()} is unreachable"))
        envelope = encode_envelope(self.node_id, True, headers, b"")
        d: Deferred[int] = self._commands.eval(
            _SEQUENCE_AND_PUBLISH,
            [self.sequence_key.format(room_id=room_id), self.channel_prefix + key],
            [envelope, template, floor],
        )
        self._sequencing.add(d)
        d.addBoth(self._sequenced, d)
        return d.addCallback(int)

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
        try:
            origin, local, headers, body = decode_envelope(payload)
        except ValueError:
            log.warn("ignoring a malformed relayed message on {channel}", channel=channel)
            return
        if origin == self.node_id and not local:
            return  # published here, and already delivered here
        key = channel[len(self.channel_prefix) :]
        shown = key
        if key.startswith(USER_PREFIX):
            shown = USER_PREFIX + key[len(USER_PREFIX) :].partition("/")[2]
        self.broker.route(key, Message(shown, self.broker.new_message_id(), body, headers))
        for listener in self.listeners:
            listener(key, origin, body)
