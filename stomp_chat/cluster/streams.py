"""Cluster-wide ``/queue/`` destinations on Redis Streams consumer groups.

Each queue is a stream (``{namespace}:queue:{destination}``) with one
consumer group; each server is a consumer named after its node id. A SEND
is an XADD by a script that first checks the limits across the cluster
(``--max-queue-messages`` entries in the stream, ``--max-queued-bytes`` in
every queue stream, ``--max-queues`` streams holding messages) and refuses
rather than trims; the SEND's RECEIPT waits for Redis. A server
reads (XREADGROUP) only for queues it has subscribers for, and only as many
messages as they can take now; a message it read is pending to it alone in
the group, so each message reaches one consumer across the cluster.

An acknowledged message (written, for ``ack:auto``; ACKed, for the client
modes) is XACKed and XDELed, so a stream holds exactly the messages not yet
acknowledged and its length is a real bound. A NACKed message, or one left
by a consumer that goes, goes to another local consumer; with none left it
is moved to the stream's tail (XACK + XADD in one script) for any server.

A server renews its claim on what it holds every third of the lease (XCLAIM
JUSTID of its own entries, which leaves the delivery count alone); every
server sweeps the queues it reads at that same pace (XAUTOCLAIM, following
its cursor), so a dead server's unacknowledged messages are redelivered, marked
``redelivered``, once they have been idle for the lease. The delivery count
Redis keeps (the PEL) feeds ``--max-redeliveries`` and the dead-letter queue.

The blocking XREADGROUP has a connection of its own; when a queue becomes
readable that the read in flight does not cover (a first subscriber, or an
ACK that makes room), CLIENT UNBLOCK ends that read at once, so nothing
waits for the block timeout.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import (
    Deferred,
    DeferredList,
    fail,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from stomp_chat.broker.broker import ACK_AUTO, Broker, BrokerError, Subscription
from stomp_chat.broker.message import DELIVERY_COUNT_HEADER, REDELIVERED_HEADER, Message
from stomp_chat.broker.queues import BrokerLimits, Queue, QueueFull, QueueSet
from stomp_chat.cluster.address import RedisAddress
from stomp_chat.cluster.linkstate import Link

log = Logger()

#: The consumer group every server reads each queue's stream through.
GROUP = "stomp-chat"
#: The most messages one read (or one sweep) takes for one queue.
READ_BATCH = 100
#: How long one XREADGROUP blocks when nothing arrives, in seconds.
DEFAULT_BLOCK = 5.0
DEFAULT_LEASE = 30.0
#: The bounds of ``--cluster-queue-lease``: renewals every third of it must get through a
#: hiccup of the process or the network, and a dead server's messages must come back.
MIN_LEASE = 1.0
MAX_LEASE = 86_400.0
#: A consumer that holds nothing and was idle this many leases leaves the group.
FORGET_CONSUMER_LEASES = 10
#: The most entry ids one ACK, renewal or release script call carries.
IDS_PER_CALL = 500

#: Failures after which a command may have been carried out: its answer did not come.
_UNANSWERED = (
    "txredisapi.ConnectionError",
    "txredisapi.TimeoutError",
    "twisted.internet.error.ConnectionLost",
    "twisted.internet.error.ConnectionDone",
)

# -- scripts -----------------------------------------------------------------------------------

#: What the scripts below share. ``remove`` acknowledges an entry and deletes it,
#: returning its size; ``free`` takes bytes off the cluster's total; ``drop_if_empty``
#: removes an emptied stream (its readers make its group again) and, once no queue
#: holds anything, the byte total with it, so that it can never drift for long.
_HELPERS = """
local function remove(key, group, id)
  local entry = redis.call('XRANGE', key, id, id)
  redis.call('XACK', key, group, id)
  if entry[1] then
    redis.call('XDEL', key, id)
    return #entry[1][2][2]
  end
  return 0
end
local function free(bytes_key, size)
  if size > 0 and redis.call('DECRBY', bytes_key, size) < 0 then
    redis.call('SET', bytes_key, 0)
  end
end
local function drop_if_empty(key, names_key, name, bytes_key)
  if redis.call('XLEN', key) == 0 then
    redis.call('DEL', key)
    redis.call('SREM', names_key, name)
    if redis.call('SCARD', names_key) == 0 then redis.call('DEL', bytes_key) end
  end
end
"""

#: KEYS: stream, names set, byte total. ARGV: group, max messages, max queues, name,
#: entry, max bytes. Refuses what would pass a limit; never trims.
SEND = """
local size = #ARGV[5]
local exists = redis.call('EXISTS', KEYS[1]) == 1
if redis.call('SISMEMBER', KEYS[2], ARGV[4]) == 0 then
  -- A stream a reader made holds nothing yet: its first message makes one more queue.
  if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[3]) then
    return redis.error_reply('QUEUES too many queues')
  end
elseif redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[2]) then
  return redis.error_reply('FULL queue is full')
end
local total = tonumber(redis.call('GET', KEYS[3]) or '0')
if total + size > tonumber(ARGV[6]) then
  return redis.error_reply('BYTES ' .. total)
end
if not exists then
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
end
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('INCRBY', KEYS[3], size)
return redis.call('XADD', KEYS[1], '*', 'm', ARGV[5])
"""

#: KEYS: stream, names set, byte total. ARGV: group, name, ids... Acknowledged entries
#: leave the stream, so its length counts what is not acknowledged yet.
ACK = _HELPERS + """
local freed = 0
for i = 3, #ARGV do freed = freed + remove(KEYS[1], ARGV[1], ARGV[i]) end
free(KEYS[3], freed)
drop_if_empty(KEYS[1], KEYS[2], ARGV[2], KEYS[3])
return freed
"""

#: KEYS: from stream, to stream, names set, byte total. ARGV: group, consumer, from
#: name, to name, max length of the target (0: none), then old id, entry pairs. Moves
#: the entries this consumer still holds to the target's tail (what another server
#: claimed stays its); a target at its length drops its oldest entries to make room.
#: Returns {moved, dropped}.
RELEASE = _HELPERS + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end
local moved, dropped, freed, added = 0, 0, 0, 0
local max_length = tonumber(ARGV[5])
for i = 6, #ARGV, 2 do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    freed = freed + remove(KEYS[1], ARGV[1], ARGV[i])
    if redis.call('EXISTS', KEYS[2]) == 0 then
      redis.call('XGROUP', 'CREATE', KEYS[2], ARGV[1], '0', 'MKSTREAM')
    end
    while max_length > 0 and redis.call('XLEN', KEYS[2]) >= max_length do
      local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
      freed = freed + remove(KEYS[2], ARGV[1], oldest[1][1])
      dropped = dropped + 1
    end
    redis.call('XADD', KEYS[2], '*', 'm', ARGV[i + 1])
    added = added + #ARGV[i + 1]
    moved = moved + 1
  end
end
if added > 0 then redis.call('INCRBY', KEYS[4], added) end
free(KEYS[4], freed)
if moved > 0 then redis.call('SADD', KEYS[3], ARGV[4]) end
if KEYS[1] ~= KEYS[2] then drop_if_empty(KEYS[1], KEYS[3], ARGV[3], KEYS[4]) end
return {moved, dropped}
"""

#: KEYS: stream, names set, byte total. ARGV: name. Removes a stream that holds nothing
#: once no consumer here reads it: a reader's XGROUP CREATE MKSTREAM made it, and streams
#: left by every queue name a client ever subscribed to would grow Redis without bound.
#: Another server still reading it makes it again (its read ends with NOGROUP).
FORGET = _HELPERS + """
drop_if_empty(KEYS[1], KEYS[2], ARGV[1], KEYS[3])
return 0
"""

#: KEYS: stream. ARGV: group, consumer, ids... Resets the idle time of the entries
#: this consumer still holds; returns {ids another consumer holds now, ids gone}.
RENEW = """
local lost, gone = {}, {}
if redis.call('EXISTS', KEYS[1]) == 0 then return {lost, {unpack(ARGV, 3)}} end
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if not p[1] then
    gone[#gone + 1] = ARGV[i]
  elseif p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return {lost, gone}
"""

#: KEYS: stream. ARGV: group, consumer, min idle ms, count, forget-consumer idle ms.
#: Claims up to count entries idle for the lease (a dead server's) with their delivery
#: counts, and forgets consumers that hold nothing and were idle long. One XAUTOCLAIM
#: looks at no more than 10 x count pending entries, perhaps all held by live servers:
#: following its cursor to the end of the pending list reaches a dead one's behind them.
CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
local out, cursor, room = {}, '0-0', tonumber(ARGV[4])
repeat
  local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor,
                           'COUNT', room)
  cursor = reply[1]
  for _, entry in ipairs(reply[2]) do
    if entry and entry[1] then
      local p = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)[1]
      out[#out + 1] = {entry[1], entry[2], p[4]}
      room = room - 1
    end
  end
until cursor == '0-0' or room <= 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if info['name'] ~= ARGV[2] and info['pending'] == 0
     and info['idle'] > tonumber(ARGV[5]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
  end
end
return out
"""

# -- entries -----------------------------------------------------------------------------------


class StreamMessage(Message):
    """A queue message read from a stream: it knows its entry, to acknowledge it there."""

    __slots__ = ("entry_id",)

    def __init__(
        self,
        destination: str,
        message_id: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        redeliveries: int = 0,
        entry_id: bytes = b"",
    ) -> None:
        super().__init__(destination, message_id, body, headers, redeliveries)
        self.entry_id = entry_id

    def redelivered(self) -> Message:
        return _same_entry(super().redelivered(), self.entry_id)

    def dead_lettered(self, destination: str, original: str) -> Message:
        return _same_entry(super().dead_lettered(destination, original), self.entry_id)


def _same_entry(message: Message, entry_id: bytes) -> StreamMessage:
    return StreamMessage(message.destination, message.message_id, message.body,
                         message.headers, message.redeliveries, entry_id)


def entry_of(message: Message) -> bytes:
    """A stream entry's one field: ``[message-id,redeliveries,headers]``, LF, the body.

    It starts with ``[``, so no client library takes it for a number.
    """
    meta = json.dumps([message.message_id, message.redeliveries, message.headers],
                      separators=(",", ":"), ensure_ascii=False)
    return meta.encode("utf-8") + b"\n" + message.body


def message_of(destination: str, entry_id: bytes, raw: bytes) -> StreamMessage:
    """The message an entry holds; ValueError if it is not one we wrote."""
    meta_line, newline, body = raw.partition(b"\n")
    if not newline:
        raise ValueError("no metadata line")
    meta = json.loads(meta_line)
    if not (isinstance(meta, list) and len(meta) == 3):
        raise ValueError("metadata is not [message-id, redeliveries, headers]")
    message_id, redeliveries, headers = meta
    if not (
        isinstance(message_id, str)
        and isinstance(redeliveries, int)
        and not isinstance(redeliveries, bool)
        and redeliveries >= 0
        and isinstance(headers, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    ):
        raise ValueError("metadata has the wrong types")
    return StreamMessage(destination, message_id, body, headers, redeliveries, entry_id)


def with_redeliveries(message: StreamMessage, redeliveries: int) -> StreamMessage:
    """``message`` marked as delivered ``redeliveries`` times before."""
    if redeliveries <= message.redeliveries:
        return message
    headers = dict(message.headers)
    headers[REDELIVERED_HEADER] = "true"
    headers[DELIVERY_COUNT_HEADER] = str(redeliveries)
    return StreamMessage(message.destination, message.message_id, message.body, headers,
                         redeliveries, message.entry_id)


def _fields(raw: Any) -> dict[bytes, bytes]:
    """An entry's flat ``[field, value, ...]`` list as a dict."""
    items = list(raw or ())
    return {items[i]: items[i + 1] for i in range(0, len(items) - 1, 2)}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _id(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


# -- the broker's queues, backed by streams ------------------------------------------------------


class StreamQueueSet(QueueSet):
    """The broker's queues in cluster mode: what local consumers take comes from Redis.

    A local queue holds only what this server read for its own consumers
    (at most what they can take now, so little); what nobody here can take
    stays in the stream for the other servers.
    """

    remote = True

    def __init__(
        self,
        limits: BrokerLimits,
        deliver: Callable[[Subscription, Message], bool],
        has_room: Callable[[Subscription], bool],
        backend: ClusterQueues,
    ) -> None:
        super().__init__(limits, deliver, has_room)
        self.backend = backend
        #: Entry ids of the messages waiting in local queues (read, not yet delivered).
        self.waiting: set[bytes] = set()

    # -- sending --------------------------------------------------------------------------

    def check(self, name: str, size: int = 0) -> None:
        if not self.backend.connected:
            raise QueueFull(
                f"queue unavailable: cluster link down (Redis at "
                f"{self.backend.address.redacted()} is unreachable); {name} takes no "
                "messages until it is back"
            )

    def submit(self, name: str, message: Message) -> Deferred[Any]:
        """Store a new message in the queue's stream; fires once Redis has it."""
        return self.backend.send(name, message)

    def put(self, name: str, message: Message) -> None:
        """A message the server itself publishes: stored in the stream, failures logged."""
        self.check(name, message.size)
        self.submit(name, message).addErrback(
            lambda failure: log.warn("a message for {queue} was not stored: {error}",
                                     queue=name, error=failure.getErrorMessage())
        )

    # -- consumers ------------------------------------------------------------------------

    def add_subscription(self, name: str, subscription: Subscription) -> None:
        super().add_subscription(name, subscription)
        self.backend.readable(name)

    def remove_subscription(
        self, name: str, subscription: Subscription, unacked: Iterable[Message] = ()
    ) -> bool:
        queue = self._queues.get(name)
        if queue is None or subscription not in queue.subscriptions:
            return False
        queue.subscriptions.remove(subscription)
        self.give_back(name, unacked)
        if not queue.subscriptions:
            if queue.backlog:
                # Read for consumers who went: back to the stream, for any server.
                self.backend.release(name, [self._pop(queue) for _ in range(len(queue.backlog))])
            self.backend.unread(name)
        self._forget_if_idle(queue)
        return True

    def give_back(self, name: str, messages: Iterable[Message]) -> None:
        # One this server lost (another claimed it once its lease ran out) is that one's.
        messages = [m for m in messages if self.backend.holds(name, m)]
        queue = self._queues.get(name)
        if queue is not None and queue.subscriptions:
            super().give_back(name, messages)  # a local consumer takes it, or dead letters
            return
        returned = self._returned(name, messages)  # no consumer here: for any server
        if returned:
            self.backend.release(name, returned)

    def _dead_letter(self, origin: str, message: Message) -> None:
        self.dead_lettered += 1
        log.info("message {message_id} from {origin} came back {count} times: moved to "
                 "{dead_letter_queue}", message_id=message.message_id, origin=origin,
                 count=message.redeliveries + 1,
                 dead_letter_queue=self.limits.dead_letter_queue)
        self.backend.dead_letter(origin, message)

    def acknowledged(self, name: str, messages: Iterable[Message]) -> None:
        self.backend.ack(name, messages)
        self.backend.readable(name)  # the consumer has room again

    # -- messages read from the stream ----------------------------------------------------

    def arrived(self, name: str, messages: list[StreamMessage]) -> None:
        """Messages read for this server's consumers of ``name``."""
        queue = self._queues.get(name)
        if queue is None or not queue.subscriptions:
            self.backend.release(name, messages)  # its consumers left meanwhile
            return
        for message in messages:
            self._push(queue, message)
        self.drain(queue)

    def room(self, name: str) -> int:
        """How many more messages this server's consumers of ``name`` can take now."""
        queue = self._queues.get(name)
        if queue is None:
            return 0
        limits = self.limits
        free = 0
        for sub in queue.subscriptions:
            pending = sub.pending
            if pending.total.closed:
                continue
            if sub.ack_mode == ACK_AUTO:
                free += READ_BATCH
            else:
                free += max(0, min(limits.prefetch - len(pending),
                                   limits.max_unacked - pending.total.count))
            if free >= READ_BATCH:
                break
        return max(0, min(READ_BATCH, free) - len(queue.backlog))

    def drop(self, name: str, entry_ids: set[bytes]) -> None:
        """Forget waiting messages another server holds now (it claimed them)."""
        queue = self._queues.get(name)
        if queue is None:
            return
        for message in [m for m in queue.backlog
                        if getattr(m, "entry_id", None) in entry_ids]:
            queue.backlog.remove(message)
            size = message.size
            queue.queued_bytes -= size
            self.queued_bytes -= size
            self.waiting.discard(message.entry_id)  # type: ignore[attr-defined]
        self._forget_if_idle(queue)

    def _push(self, queue: Queue, message: Message, *, at_head: bool = False) -> None:
        super()._push(queue, message, at_head=at_head)
        entry_id = getattr(message, "entry_id", None)
        if entry_id is not None:
            self.waiting.add(entry_id)

    def _pop(self, queue: Queue) -> Message:
        message = super()._pop(queue)
        entry_id = getattr(message, "entry_id", None)
        if entry_id is not None:
            self.waiting.discard(entry_id)
        return message

    def drain(self, queue: Queue) -> None:
        """Hand waiting messages out; ``ack:auto`` ones are acknowledged once written."""
        if queue.draining:
            return
        queue.draining = True
        written: list[Message] = []
        try:
            while queue.backlog:
                sub = queue.next_ready(self._has_room)
                if sub is None:
                    break
                message = self._pop(queue)
                if self._deliver(sub, message) and sub.ack_mode == ACK_AUTO and (
                    getattr(message, "entry_id", None) not in self.waiting
                ):
                    written.append(message)  # not given back by a session closing meanwhile
        finally:
            queue.draining = False
        if written:
            self.backend.ack(queue.name, written)
        if queue.subscriptions:
            self.backend.readable(queue.name)
        self._forget_if_idle(queue)


# -- the Redis side ------------------------------------------------------------------------------


class ClusterQueues(Service):
    """Backs a broker's queues with Redis streams; one per server process."""

    def __init__(
        self,
        broker: Broker,
        address: RedisAddress,
        reactor: Any,
        *,
        lease: float = DEFAULT_LEASE,
        reply_timeout: float = 5.0,
        block: float = DEFAULT_BLOCK,
        max_retry: float = 10.0,
    ) -> None:
        self.address = address
        self.reactor = reactor
        self.lease = lease
        self.reply_timeout = reply_timeout
        self.block = block
        self.max_retry = max_retry
        self.consumer = broker.node_id
        self.limits = broker.limits
        #: The queues holding messages, across the cluster (for --max-queues).
        self.names_key = f"{address.namespace}:queues"
        #: Bytes of the entries every queue holds, across the cluster (--max-queued-bytes).
        self.bytes_key = f"{address.namespace}:queued-bytes"
        self.queues: StreamQueueSet = broker.use_queues(
            lambda limits, deliver, has_room: StreamQueueSet(limits, deliver, has_room, self)
        )
        self.commands_link = Link("queue commands", self._commands_up, self._link_down)
        self.reader_link = Link("queue reader", self._reader_up, self._link_down)
        self._commands: Any = None
        self._reader: Any = None
        #: Entry ids this server read and has not had acknowledged in Redis, by queue.
        self.held: dict[str, dict[bytes, None]] = {}
        #: Acknowledged entries whose XACK has not been confirmed yet, by queue.
        self.unconfirmed: dict[str, dict[bytes, None]] = {}
        self._ack_scheduled = False
        #: Queues whose group this reader connection has made sure of.
        self._grouped: set[str] = set()
        #: The queues the XREADGROUP in flight covers (None: no read in flight).
        self._in_flight: frozenset[str] | None = None
        #: Fires once the read in flight has been handled.
        self._read_done_d: Deferred[None] | None = None
        self._reader_id: Any = None
        self._read_retry: Any = None
        #: Whether the last read brought messages (the next one then need not block).
        self._brought = False
        self._retry_delay = 0.05
        self._renewal = LoopingCall(self._renew_and_sweep)
        self._renewal.clock = reactor
        #: Calls to Redis under way, waited for on stop.
        self._calls: set[Deferred[Any]] = set()
        #: Messages redelivered here after their server's lease ran out.
        self.reclaimed = 0
        #: No claims before this (reactor seconds): one lease after the commands link came
        #: up, so that servers cut off by the same outage get back and renew first.
        self._claims_from = 0.0

    @property
    def connected(self) -> bool:
        return self.commands_link.is_up

    @property
    def degraded(self) -> str | None:
        down = [link.name for link in (self.commands_link, self.reader_link) if not link.is_up]
        return f"{' and '.join(down)} link down" if down else None

    def key(self, name: str) -> str:
        return f"{self.address.namespace}:queue:{name}"

    # -- lifecycle --------------------------------------------------------------------------

    def startService(self) -> None:
        from stomp_chat.cluster import links  # imports the reactor: only once running

        super().startService()
        self._commands = links.connect_commands(
            self.address, self.reactor, self.commands_link, self.reply_timeout,
            self.max_retry, convert_numbers=False,
        )
        self._reader = links.connect_commands(
            self.address, self.reactor, self.reader_link, self.block + self.reply_timeout,
            self.max_retry, convert_numbers=False,
        )
        self._start_renewal()

    def _start_renewal(self) -> None:
        self._renewal.start(self.lease / 3, now=False).addErrback(self._renewal_failed)

    def _renewal_failed(self, failure: Failure) -> None:
        """The renewal timer stopped on an error: log it and start it again, or this
        server's leases would run out and other servers take its messages."""
        log.failure("cluster queues: renewing leases failed; restarting", failure)
        if self.running and not self._renewal.running:
            self._start_renewal()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._renewal.running:
            self._renewal.stop()
        if self._read_retry is not None and self._read_retry.active():
            self._read_retry.cancel()
        # A read under way may bring messages nobody here takes any more: end it, and
        # give what it brings back to the stream, before the connections go.
        reading: Deferred[None] = Deferred()
        if self._read_done_d is not None:
            self._read_done_d.addBoth(lambda _: None if reading.called else reading.callback(None))
            self._unblock()
        else:
            reading.callback(None)
        reading.addTimeout(self.reply_timeout, self.reactor)
        reading.addErrback(lambda _: None)

        def settle(_: Any) -> Deferred[Any]:
            self._flush_acks()
            waiting = gatherResults(list(self._calls), consumeErrors=True)
            waiting.addTimeout(self.reply_timeout, self.reactor)
            return waiting.addErrback(lambda _: None)

        return reading.addCallback(settle).addCallback(lambda _: self._disconnect())

    def _disconnect(self) -> Deferred[None]:
        self.commands_link.stop()
        self.reader_link.stop()
        waits = [f.disconnect() for f in (self._commands, self._reader) if f is not None]
        return gatherResults(waits, consumeErrors=True).addBoth(lambda _: None)

    def disconnect_now(self) -> None:
        """Drop both connections at once (a test's last resort)."""
        for factory in (self._commands, self._reader):
            if factory is not None:
                factory.disconnect()

    def _commands_up(self, protocol: Any) -> None:
        log.info("cluster queues: connected to {redis}", redis=self.address.redacted())
        # After an outage every server's entries look idle: the others, alive all along,
        # reconnect within their back-off and renew theirs before this one claims any.
        self._claims_from = self.reactor.seconds() + self.lease
        self._renew_and_sweep()  # and the acknowledgements that waited

    def _reader_up(self, protocol: Any) -> None:
        self._grouped.clear()
        self._in_flight = None
        self._read_done_d = None

        def known(client_id: Any) -> None:
            self._reader_id = client_id
            self._read()

        d = protocol.execute_command("CLIENT", "ID")
        d.addCallbacks(known, lambda failure: log.warn(
            "cluster queues: the reader connection did not say its id: {error}",
            error=failure.getErrorMessage()))

    def _link_down(self) -> None:
        if self.running:
            log.warn("cluster queues: a link to {redis} is down; queue SENDs are refused "
                     "until it is back", redis=self.address.redacted())

    # -- calls ------------------------------------------------------------------------------

    def _call(self, *args: Any) -> Deferred[Any]:
        """A command over the commands link; fails at once while it is down."""
        protocol = self.commands_link.protocol
        if protocol is None:
            return fail(BrokerError("queue unavailable: cluster link down"))
        d = maybeDeferred(protocol.execute_command, *args)
        self._calls.add(d)
        d.addBoth(self._called, d)
        return d

    def _called(self, result: Any, d: Deferred[Any]) -> Any:
        self._calls.discard(d)
        return result

    def _script(self, script: str, keys: list[str], args: list[Any]) -> Deferred[Any]:
        protocol = self.commands_link.protocol
        if protocol is None:
            return fail(BrokerError("queue unavailable: cluster link down"))
        d = maybeDeferred(protocol.eval, script, keys, args)
        self._calls.add(d)
        d.addBoth(self._called, d)
        return d

    # -- sending ----------------------------------------------------------------------------

    def send(self, name: str, message: Message) -> Deferred[Any]:
        """XADD a new message, unless the queue is full; fires once Redis has it."""
        limits = self.limits
        d = self._script(SEND, [self.key(name), self.names_key, self.bytes_key],
                         [GROUP, limits.max_queue_messages, limits.max_queues, name,
                          entry_of(message), limits.max_queued_bytes])
        return d.addErrback(self._refused, name, message)

    def _refused(self, failure: Failure, name: str, message: Message) -> None:
        if failure.check(BrokerError):
            failure.raiseException()
        text = failure.getErrorMessage()
        if text.startswith("FULL"):
            raise BrokerError(
                f"queue full: {name} holds {self.limits.max_queue_messages} messages not yet "
                "acknowledged across the cluster"
            )
        if text.startswith("BYTES"):
            raise BrokerError(
                f"the cluster's queues are full ({text.partition(' ')[2]} bytes waiting, "
                f"limit {self.limits.max_queued_bytes}): {name} cannot take "
                f"{len(entry_of(message))} more bytes"
            )
        if text.startswith("QUEUES"):
            raise BrokerError(
                f"too many queues: {name} would exceed the cluster's limit of "
                f"{self.limits.max_queues} queue destinations"
            )
        log.warn("cluster queues: storing a message for {queue} failed: {error}",
                 queue=name, error=text)
        if failure.check(*_UNANSWERED):
            # Redis may have carried the script out before its answer was lost.
            raise BrokerError(f"queue unavailable: Redis did not answer ({text}); the message "
                              f"to {name} may have been stored")
        raise BrokerError(f"queue unavailable: {name} could not be stored in Redis ({text})")

    # -- acknowledging ----------------------------------------------------------------------

    def ack(self, name: str, messages: Iterable[Message]) -> None:
        """Acknowledge delivered messages in their stream (batched per reactor turn)."""
        ids = self.unconfirmed.setdefault(name, {})
        for message in messages:
            entry_id = getattr(message, "entry_id", None)
            if entry_id is not None:
                ids[entry_id] = None
        if not ids:
            del self.unconfirmed[name]
        elif not self._ack_scheduled:
            self._ack_scheduled = True
            self.reactor.callLater(0, self._flush_acks)

    def _flush_acks(self) -> None:
        self._ack_scheduled = False
        if not self.connected:
            return  # again once the commands link is up
        for name, ids in list(self.unconfirmed.items()):
            batch = list(ids)[:IDS_PER_CALL]
            d = self._script(ACK, [self.key(name), self.names_key, self.bytes_key],
                             [GROUP, name, *batch])
            d.addCallbacks(self._acked, self._ack_failed, callbackArgs=(name, batch))

    def _acked(self, _: Any, name: str, batch: list[bytes]) -> None:
        ids = self.unconfirmed.get(name, {})
        for entry_id in batch:
            ids.pop(entry_id, None)
        if not ids:
            self.unconfirmed.pop(name, None)
        else:
            self._flush_soon()
        self._forget(name, batch)

    def holds(self, name: str, message: Message) -> bool:
        """Whether this server still holds ``message``'s entry (it was not claimed since)."""
        return getattr(message, "entry_id", None) in self.held.get(name, ())

    def _forget(self, name: str, entry_ids: Iterable[bytes]) -> None:
        """No longer renew the lease on these entries."""
        held = self.held.get(name)
        if held is None:
            return
        for entry_id in entry_ids:
            held.pop(entry_id, None)
        if not held:
            del self.held[name]

    def _ack_failed(self, failure: Failure) -> None:
        log.warn("cluster queues: acknowledging failed: {error}; retried at the next renewal",
                 error=failure.getErrorMessage())

    def _flush_soon(self) -> None:
        if not self._ack_scheduled:
            self._ack_scheduled = True
            self.reactor.callLater(0, self._flush_acks)

    # -- giving back ------------------------------------------------------------------------

    def release(self, name: str, messages: Sequence[Message]) -> None:
        """Move messages this server holds to the tail of their stream, for any server."""
        self._move(name, name, 0, messages)

    def dead_letter(self, origin: str, message: Message) -> None:
        """Move a message that came back too often to the dead-letter queue's stream.

        That stream is trimmed to ``--max-queue-messages``: the oldest dead
        letters make room, as in a single server.
        """
        target = self.limits.dead_letter_queue
        letter = message.dead_lettered(target, origin)
        self._move(origin, target, self.limits.max_queue_messages, [letter])

    def _move(
        self, origin: str, target: str, max_length: int, messages: Sequence[Message]
    ) -> None:
        pairs: list[Any] = []
        for message in messages:
            entry_id = getattr(message, "entry_id", None)
            if entry_id is not None:
                pairs += [entry_id, entry_of(message)]
        if not pairs:
            return
        self._forget(origin, pairs[::2])
        d = self._script(RELEASE, [self.key(origin), self.key(target), self.names_key,
                                   self.bytes_key],
                         [GROUP, self.consumer, origin, target, max_length, *pairs])

        def moved(reply: Any) -> None:
            dropped = int(reply[1])
            if dropped:
                self.queues.dead_letters_dropped += dropped
                log.warn("cluster queues: {count} dead letter(s) dropped: {queue} is full",
                         count=dropped, queue=target)
            self.readable(target)

        def failed(failure: Failure) -> None:
            log.warn("cluster queues: giving {count} message(s) of {queue} back failed: "
                     "{error}; they are redelivered once the lease of {lease}s runs out",
                     count=len(pairs) // 2, queue=origin, error=failure.getErrorMessage(),
                     lease=self.lease)

        d.addCallbacks(moved, failed)

    def unread(self, name: str) -> None:
        """No consumer here reads ``name`` any more: a read blocked on it ends (it would take
        messages for nobody, to give back at the tail), its stream goes if it holds nothing."""
        self._grouped.discard(name)
        if self._in_flight is not None and name in self._in_flight:
            self._unblock()
        if not self.connected:
            return
        self._script(FORGET, [self.key(name), self.names_key, self.bytes_key],
                     [name]).addErrback(lambda failure: log.warn(
                         "cluster queues: removing the empty stream of {queue} failed: "
                         "{error}", queue=name, error=failure.getErrorMessage()))

    def _unread_after(self, names: Iterable[str]) -> None:
        """A read covered queues whose consumers left meanwhile: it may have made their
        streams again (MKSTREAM) after :meth:`unread` removed them."""
        for name in names:
            if not self.queues.subscriber_count(name):
                self.unread(name)

    # -- reading ----------------------------------------------------------------------------

    def readable(self, name: str) -> None:
        """``name`` may have room for more: read, or end a read that does not cover it."""
        if self.reader_link.protocol is None:
            return
        in_flight = self._in_flight
        if in_flight is None:
            self._read()
        elif name not in in_flight and self.queues.room(name) > 0:
            self._unblock()

    def _unblock(self, tries: int = 10) -> None:
        if self._reader_id is None or self._in_flight is None:
            return
        reading = self._in_flight

        def answered(unblocked: Any) -> None:
            # 0: the read was not blocking yet; try again while it is the same read.
            if not int(unblocked) and tries > 1 and self._in_flight is reading:
                self.reactor.callLater(0.01, self._unblock, tries - 1)

        self._call("CLIENT", "UNBLOCK", self._reader_id).addCallbacks(answered, lambda _: None)

    def _read(self) -> None:
        protocol = self.reader_link.protocol
        if protocol is None or self._in_flight is not None or not self.running:
            return
        rooms = {}
        for queue in self.queues:
            if queue.subscriptions:
                room = self.queues.room(queue.name)
                if room > 0:
                    rooms[queue.name] = room
        if not rooms:
            return  # read again once a queue has room
        names = sorted(rooms)
        self._in_flight = frozenset(names)
        handled: Deferred[None] = Deferred()
        self._read_done_d = handled
        missing = [name for name in names if name not in self._grouped]
        d: Deferred[Any] = (
            gatherResults([self._create_group(protocol, name) for name in missing],
                          consumeErrors=True)
            if missing else succeed(None)
        )
        by_room: dict[int, list[str]] = {}
        for name in names:
            by_room.setdefault(rooms[name], []).append(name)
        if self._brought and len(by_room) > 1:
            # Messages are coming: read each queue up to its own room at once (no block),
            # so that a consumer with little room does not make every queue read that little.
            d.addCallback(lambda _: self._read_by_room(protocol, by_room))
        else:
            count = min(rooms.values())
            d.addCallback(lambda _: protocol.execute_command(
                "XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", count,
                "BLOCK", int(self.block * 1000), "STREAMS",
                *[self.key(name) for name in names], *([">"] * len(names)),
            ))
        d.addCallbacks(self._read_done, self._read_failed, callbackArgs=(names, handled),
                       errbackArgs=(names, handled))
        d.addBoth(lambda _: handled.callback(None))

    def _read_by_room(self, protocol: Any, by_room: dict[int, list[str]]) -> Deferred[Any]:
        """One XREADGROUP without BLOCK per room size; their replies as one. What one
        of them read is kept when another failed (those entries are this server's now)."""
        reads = [
            protocol.execute_command(
                "XREADGROUP", "GROUP", GROUP, self.consumer, "COUNT", count, "STREAMS",
                *[self.key(name) for name in names], *([">"] * len(names)))
            for count, names in by_room.items()
        ]

        def combined(results: list[tuple[bool, Any]]) -> Any:
            replies = [item for ok, reply in results if ok for item in reply or ()]
            failures = [failure for ok, failure in results if not ok]
            return failures[0] if failures and not replies else replies

        return DeferredList(reads, consumeErrors=True).addCallback(combined)

    def _create_group(self, protocol: Any, name: str) -> Deferred[None]:
        def created(_: Any) -> None:
            self._grouped.add(name)

        def exists(failure: Failure) -> None:
            if "BUSYGROUP" not in failure.getErrorMessage():
                failure.raiseException()
            self._grouped.add(name)

        d = protocol.execute_command("XGROUP", "CREATE", self.key(name), GROUP, "0", "MKSTREAM")
        return d.addCallbacks(created, exists)  # type: ignore[no-any-return]

    def _read_done(self, reply: Any, names: list[str], handled: Deferred[None]) -> None:
        if handled is not self._read_done_d:
            return  # a read on a connection lost since: its entries are claimed back later
        self._in_flight = None
        self._read_done_d = None
        self._retry_delay = 0.05
        self._brought = False
        by_key = {self.key(name): name for name in names}
        for stream_key, entries in reply or ():
            self._brought = self._brought or bool(entries)
            name = by_key.get(_text(stream_key))
            if name is not None:
                self._arrived(name, [(entry_id, fields, 1) for entry_id, fields in entries])
        self._unread_after(names)
        self._read()

    def _read_failed(self, failure: Failure, names: list[str], handled: Deferred[None]) -> None:
        if handled is not self._read_done_d:
            return
        self._in_flight = None
        self._read_done_d = None
        text = failure.getErrorMessage()
        self._regroup(text, names)
        if not self.running or self.reader_link.protocol is None:
            return
        self._unread_after(names)
        if "UNBLOCKED" in text or "NOGROUP" in text:
            # A stream emptied and removed while this server waited on it (or just before
            # the read): make its group again and read on, at once.
            delay = 0.0
        else:
            log.warn("cluster queues: reading failed: {error}; retrying", error=text)
            delay = self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, 2.0)
        if self._read_retry is None or not self._read_retry.active():
            self._read_retry = self.reactor.callLater(delay, self._read)

    def _regroup(self, error: str, names: list[str]) -> None:
        """After a failed read, the queues whose group must be made again: the one a
        NOGROUP names (a stream removed once emptied), not every queue read; none for
        UNBLOCKED (the read again says NOGROUP for the stream that went); all otherwise."""
        if "UNBLOCKED" in error:
            return
        if "NOGROUP" in error:
            gone = [name for name in names if f"'{self.key(name)}'" in error]
            if gone:
                self._grouped.difference_update(gone)
                return
        self._grouped.clear()

    def _arrived(self, name: str, entries: list[tuple[Any, Any, Any]]) -> None:
        """Entries read or claimed: this server holds them now; hand them to its consumers."""
        held = self.held.setdefault(name, {})
        messages: list[StreamMessage] = []
        dead: list[StreamMessage] = []
        for raw_id, raw_fields, deliveries in entries:
            entry_id = _id(raw_id)
            if entry_id in held:
                continue  # ours already (claimed back after an outage)
            held[entry_id] = None
            try:
                message = message_of(name, entry_id, _fields(raw_fields)[b"m"])
            except (KeyError, ValueError) as error:
                log.warn("cluster queues: entry {entry} of {queue} is not a message we wrote "
                         "({error}): acknowledged and dropped", entry=entry_id, queue=name,
                         error=error)
                self.ack(name, [StreamMessage(name, "", b"", entry_id=entry_id)])
                continue
            before = message.redeliveries + int(deliveries) - 1
            if before > message.redeliveries:
                # A server that held it is gone: its delivery did not count as acknowledged.
                self.reclaimed += 1
                if before - 1 >= self.limits.max_redeliveries and (
                    name != self.limits.dead_letter_queue
                ):
                    dead.append(with_redeliveries(message, before - 1))
                    continue
                message = with_redeliveries(message, before)
            messages.append(message)
        for message in dead:
            self.queues._dead_letter(name, message)
        if messages:
            self.queues.arrived(name, messages)

    # -- the lease --------------------------------------------------------------------------

    def _renew_and_sweep(self) -> Deferred[None] | None:
        """Renew the lease on what this server holds; claim what dead servers held."""
        if not self.connected:
            return None
        if self.unconfirmed and not self._ack_scheduled:
            self._flush_acks()  # acknowledgements Redis refused while the link stayed up
        calls = []
        for name, held in list(self.held.items()):
            ids = list(held)
            for start in range(0, len(ids), IDS_PER_CALL):
                d = self._script(RENEW, [self.key(name)],
                                 [GROUP, self.consumer, *ids[start:start + IDS_PER_CALL]])
                calls.append(d.addCallback(self._renewed, name))
        lease_ms = int(self.lease * 1000)
        claiming = self.reactor.seconds() >= self._claims_from
        for queue in self.queues if claiming else ():
            room = self.queues.room(queue.name) if queue.subscriptions else 0
            if room > 0:
                d = self._script(CLAIM, [self.key(queue.name)],
                                 [GROUP, self.consumer, lease_ms, room,
                                  lease_ms * FORGET_CONSUMER_LEASES])
                calls.append(d.addCallback(self._claimed, queue.name))
        done = gatherResults(calls, consumeErrors=True)
        return done.addCallbacks(lambda _: None, self._sweep_failed)

    def _sweep_failed(self, failure: Failure) -> None:
        error = failure.value
        inner = getattr(error, "subFailure", None)
        log.warn("cluster queues: renewing or sweeping failed: {error}",
                 error=inner.getErrorMessage() if inner is not None else str(error))

    def _renewed(self, reply: Any, name: str) -> None:
        lost_ids, gone_ids = reply
        lost = {_id(entry_id) for entry_id in lost_ids}
        self._forget(name, lost | {_id(entry_id) for entry_id in gone_ids})
        if lost:
            # Another server claimed them while this one could not renew: it delivers those
            # not handed out here yet; those already handed out may reach two consumers.
            log.warn("cluster queues: {count} message(s) of {queue} were claimed by another "
                     "server after this one's lease ran out", count=len(lost), queue=name)
            self.queues.drop(name, lost)

    def _claimed(self, reply: Any, name: str) -> None:
        if reply:
            self._arrived(name, [tuple(entry) for entry in reply])

    # -- introspection ----------------------------------------------------------------------

    def held_count(self) -> int:
        """Messages this server has read and not had acknowledged in Redis yet."""
        return sum(len(ids) for ids in self.held.values())
