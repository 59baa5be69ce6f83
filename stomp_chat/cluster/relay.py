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
from twisted.internet.defer import Deferred, DeferredList, gatherResults, inlineCallbacks
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
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"invalid port in Redis URL {url!r}") from None
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
    end = payload.index(b"\n")
    origin, local, headers = json.loads(payload[:end])
    return origin, local, headers, payload[end + 1 :]


#: Told of every relayed chat message: (routing key, origin node, body).
RelayListener = Callable[[str, str, bytes], object]


class RedisRelay(Service):
    """Relays a broker's messages to and from the other processes."""

    def __init__(self, broker: Broker, address: RedisAddress) -> None:
        self.broker = broker
        self.address = address
        self.node_id = broker.node_id
        self.channel_prefix = f"{address.namespace}:"
        self.sequence_key = f"{address.namespace}:seq:{{room_id}}"
        self.listeners: list[RelayListener] = []
        self._commands: Any = None
        self._subscriber: Any = None
        #: Chat messages sent to Redis whose seq has not come back yet.
        self._sequencing: set[Deferred[Any]] = set()

    # -- lifecycle -----------------------------------------------------

    def startService(self) -> None:
        import txredisapi

        super().startService()
        address = self.address
        self._commands = txredisapi.lazyConnection(
            address.host, address.port, dbid=address.db, password=address.password,
            charset=None, convertNumbers=True,
        )
        relay = self

        class Subscriber(txredisapi.SubscriberProtocol):  # type: ignore[misc]
            def connectionMade(self) -> Any:
                d = super().connectionMade()
                self.psubscribe(relay.channel_prefix + "*")
                return d

            def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
                relay.received(channel, message)

        factory = txredisapi.SubscriberFactory(isLazy=True)
        factory.protocol = Subscriber
        factory.charset = None  # bodies are bytes, not always UTF-8
        factory.convertNumbers = False
        factory.startConnecting(
            txredisapi._makeEndpoint(address.host, address.port, None, None)
        )
        self._subscriber = factory
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

    # -- out -----------------------------------------------------------

    def published(self, key: str, message: Message) -> None:
        """A local publish (already delivered locally): tell the others."""
        if key.startswith(QUEUE_PREFIX) or self._commands is None:
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
        """Number a chat message and publish it to every server, this one included."""
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
