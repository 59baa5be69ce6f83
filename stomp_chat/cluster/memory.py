"""An in-memory cluster: relays that share one hub in place of Redis.

The hub does what Redis does for the relay (pub/sub channels, the
numbering script, counters that can be lost), on a clock the caller
drives, so the chat's cluster path runs in unit tests without Redis. The
relays reuse the real envelope codec, per-turn batching and ingestion; only
the transport differs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from stomp_chat.broker import QUEUE_PREFIX, Broker, Message
from stomp_chat.cluster.batching import (
    NEEDS_FLOOR,
    SCRIPT_ARGS_PER_MESSAGE,
    SCRIPT_HEAD_ARGS,
    SEQUENCE_AND_PUBLISH,
    ChatEntry,
    TurnBatch,
)
from stomp_chat.cluster.envelope import decode_envelope, encode_envelope, meta_prefix
from stomp_chat.cluster.follow import bodies_of
from stomp_chat.cluster.ingest import Ingestion, RelayListener
from stomp_chat.cluster.relay import RedisUnavailable


class MemoryHub:
    """Stands in for Redis: channels, counters, and an on/off switch for outages."""

    def __init__(self, clock: IReactorTime, namespace: str = "memory") -> None:
        self.clock = clock
        self.namespace = namespace
        self.counters: dict[str, int] = {}
        #: Each room's recent list, by key, as the script keeps it.
        self.lists: dict[str, list[bytes]] = {}
        self.relays: list[MemoryRelay] = []
        self.up = True
        #: Every PUBLISH, in order: (channel, payload).
        self.published: list[tuple[str, bytes]] = []

    def publish(self, channel: str, payload: bytes) -> Deferred[int]:
        """Deliver to every started relay at the clock's next turn, like a PUBLISH."""
        if not self.up:
            return fail(RedisUnavailable("the hub is down"))
        self.published.append((channel, payload))
        receivers = [r for r in self.relays if r.running]
        for relay in receivers:
            self.clock.callLater(0, relay.ingestion.received, channel, payload)
        return succeed(len(receivers))

    def run_script(self, script: str, args: list[Any]) -> Deferred[list[int]]:
        """The numbering script, step for step as Redis runs it (atomically)."""
        if script != SEQUENCE_AND_PUBLISH:
            return fail(ValueError("the hub runs only the numbering script"))
        if not self.up:
            return fail(RedisUnavailable("the hub is down"))
        per, head = SCRIPT_ARGS_PER_MESSAGE, SCRIPT_HEAD_ARGS
        try:
            count, cap = int(args[0]), int(args[1])
        except (IndexError, ValueError):
            return fail(ValueError("the script's first arguments are numbers"))
        if len(args) != head + count * per:
            return fail(ValueError("wrong number of script arguments"))
        placeholder = args[3]
        seqs: list[int] = []
        records: dict[str, list[bytes]] = {}
        for i in range(count):
            key, recent, channel, floor, durable, meta, template = args[
                head + i * per : head + (i + 1) * per
            ]
            if self.counters.get(key, 0) > 0:  # INCR answering 1 means it was missing
                seq = max(self.counters[key] + 1, int(floor) + 1)
            elif int(durable) >= 0:
                seq = max(int(floor), int(durable)) + 1
            else:
                self.counters.pop(key, None)
                seqs.append(NEEDS_FLOOR)
                continue
            self.counters[key] = seq
            body = template.replace(placeholder, str(seq).encode())
            record = meta + b"%d,%d]\n" % (seq, len(body)) + body
            records.setdefault(channel, []).append(record)
            kept = self.lists.setdefault(recent, [])
            kept.append(record)
            del kept[:-cap]
            seqs.append(seq)
        for channel, batch in records.items():
            self.publish(channel, b"".join(batch))
        return succeed(seqs)


class MemoryRelay(Service):
    """A relay on a MemoryHub, with the same interface as RedisRelay."""

    def __init__(self, broker: Broker, hub: MemoryHub) -> None:
        self.broker = broker
        self.hub = hub
        self.node_id = broker.node_id
        self.channel_prefix = f"{hub.namespace}:"
        self.sequence_key = f"{hub.namespace}:seq:{{room_id}}"
        self.ingestion = Ingestion(broker, self.channel_prefix)
        self.batch = TurnBatch(hub.clock, hub.publish, hub.run_script)
        hub.relays.append(self)

    @property
    def listeners(self) -> list[RelayListener]:
        return self.ingestion.listeners

    @property
    def connected(self) -> bool:
        return bool(self.running) and self.hub.up

    def ping(self) -> Deferred[Any]:
        return succeed(b"PONG") if self.hub.up else fail(RedisUnavailable("the hub is down"))

    def ready(self) -> Deferred[None]:
        return succeed(None)

    def follows(self, room_id: int) -> bool:
        """The hub delivers every channel to every relay: each follows every room."""
        return bool(self.running)

    def recent(self, room_id: int) -> Deferred[list[bytes]]:
        if not self.hub.up:
            return fail(RedisUnavailable("the hub is down"))
        return succeed(bodies_of(self.hub.lists.get(f"{self.hub.namespace}:recent:{room_id}", [])))

    def forget(self, room_id: int, seq: int) -> Deferred[None]:
        kept = self.hub.lists.get(f"{self.hub.namespace}:recent:{room_id}", [])
        kept[:] = [raw for raw in kept if decode_envelope(raw)[3] != seq]
        return succeed(None)

    def startService(self) -> None:
        super().startService()
        self.broker.published_listeners.append(self.published)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self.published in self.broker.published_listeners:
            self.broker.published_listeners.remove(self.published)
        self.batch.flush_now()
        return succeed(None)

    def published(self, key: str, message: Message) -> None:
        if key.startswith(QUEUE_PREFIX) or not self.connected:
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
        if not placeholder:
            raise ValueError("the seq placeholder must not be empty")
        if not self.connected:
            return fail(RedisUnavailable("the hub is down"))
        d: Deferred[int] = Deferred()
        self.batch.add_chat(ChatEntry(
            room_id, self.sequence_key.format(room_id=room_id),
            f"{self.hub.namespace}:recent:{room_id}", self.channel_prefix + key, floor,
            meta_prefix(self.node_id, True, headers), template, placeholder, d, durable_floor,
        ))
        return d
