"""Per-turn batching: what one reactor turn relays crosses Redis together.

Round trips, not messages, cost: plain records are joined into one PUBLISH
per channel, and chat messages are numbered and published by one script
call per few hundred.

Chat rooms need one order that every server agrees on, and sequence numbers
without gaps: a chat message is numbered and published by one Redis script
(INCR, then PUBLISH), atomically, so the order of the pub/sub stream *is*
the order of ``seq``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

#: Number chat messages and publish them, in one atomic step. ARGV starts with
#: the message count, how many records each room's recent list keeps, that
#: list's time to live in seconds, and the seq placeholder of the templates;
#: then per message: the room's counter key, the room's recent list, its
#: channel, ``floor`` (the highest seq the caller knows of), the database's
#: floor for the room (-1 when not read), the record's metadata up to its
#: seq, and the body template. Each channel gets one PUBLISH with all its
#: records, in order, and each room's recent list one RPUSH of them, capped
#: once; from that list a server fills what it missed (see
#: stomp_chat.cluster.follow). Per message Redis runs one INCR: the rest is
#: per room and call, which is what bounds how many messages one Redis numbers.
#:
#: Redis keeps nothing on disk: a counter that is missing was lost (or never
#: made), and one server's memory is no safe floor for it (that server may
#: have missed messages). INCR answers 1 exactly when the counter was missing
#: (a counter is never 0). Such a message gets seq -1 and is not published,
#: and the counter INCR made is removed again; its server reads the floor from
#: the database and sends it again. The database's floor counts only while
#: the counter is still missing: a counter another server has made again
#: since (from the same floor) goes on by INCR, so two servers that found it
#: missing at once leave no gap between them.
SEQUENCE_AND_PUBLISH = """
local function fill(template, placeholder, seq)
  local parts = {}
  local start = 1
  while true do
    local i, j = string.find(template, placeholder, start, true)
    if i == nil then break end
    parts[#parts + 1] = string.sub(template, start, i - 1)
    start = j + 1
  end
  parts[#parts + 1] = string.sub(template, start)
  return table.concat(parts, seq)
end
local n = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local placeholder = ARGV[4]
local seqs = {}
local records = {}
local recents = {}
local channels = {}
for i = 0, n - 1 do
  local b = 5 + i * 7
  local counter = ARGV[b]
  local floor = tonumber(ARGV[b + 3])
  local seq = redis.call('INCR', counter)
  if seq == 1 then
    local durable = tonumber(ARGV[b + 4])
    if durable >= 0 then
      seq = math.max(floor, durable) + 1
      if seq ~= 1 then redis.call('SET', counter, seq) end
    else
      redis.call('DEL', counter)
      seq = -1
    end
  elseif seq <= floor then
    seq = floor + 1
    redis.call('SET', counter, seq)
  end
  if seq >= 0 then
    local body = fill(ARGV[b + 6], placeholder, tostring(seq))
    local channel = ARGV[b + 2]
    local list = records[channel]
    if list == nil then
      list = {}
      records[channel] = list
      recents[channel] = ARGV[b + 1]
      channels[#channels + 1] = channel
    end
    list[#list + 1] = ARGV[b + 5] .. seq .. ',' .. #body .. ']\\n' .. body
  end
  seqs[#seqs + 1] = seq
end
for _, channel in ipairs(channels) do
  local list = records[channel]
  local recent = recents[channel]
  redis.call('RPUSH', recent, unpack(list))
  redis.call('LTRIM', recent, -cap, -1)
  redis.call('EXPIRE', recent, ttl)
  redis.call('PUBLISH', channel, table.concat(list))
end
return seqs
"""

#: The seq the script answers for a message whose counter Redis lost.
NEEDS_FLOOR = -1

#: The most chat messages numbered by one script call.
MAX_SCRIPT_BATCH = 500
#: How many of a room's last messages Redis keeps for servers to fill gaps from.
DEFAULT_RECENT_SIZE = 1000
#: How long a room's recent list outlives its last message, in seconds.
RECENT_TTL = 86400
#: The arguments the numbering script takes before, and per, message.
SCRIPT_HEAD_ARGS = 4
SCRIPT_ARGS_PER_MESSAGE = 7


@dataclass(slots=True)
class ChatEntry:
    """A chat message waiting for Redis to number it."""

    room_id: int
    seq_key: str
    recent_key: str
    channel: str
    floor: int
    meta: bytes
    template: bytes
    placeholder: bytes
    deferred: Deferred[int]
    durable_floor: Callable[[int], Deferred[int]] | None
    #: The database's floor for the room, once read (-1 until then).
    durable: int = -1


class TurnBatch:
    """Collects one turn's records and chat messages and sends them at its end."""

    def __init__(
        self,
        reactor: Any,
        publish: Callable[[str, bytes], Deferred[Any]],
        run_script: Callable[[str, list[Any]], Deferred[Any]],
        recent_size: int = DEFAULT_RECENT_SIZE,
    ) -> None:
        self.reactor = reactor
        self.recent_size = recent_size
        self._publish = publish
        self._run_script = run_script
        self._records: dict[str, list[bytes]] = {}
        self._chat: list[ChatEntry] = []
        #: Rooms whose counter Redis lost, by counter key: messages parked while the
        #: floor is read from the database. First those Redis answered without a seq,
        #: in the order they were sent; then those not sent yet, in arrival order.
        self._awaiting_floor: dict[str, tuple[list[ChatEntry], list[ChatEntry]]] = {}
        #: Floors read for parked rooms whose earlier messages are still with Redis.
        self._floors: dict[str, int] = {}
        #: Messages sent to Redis and not answered yet, by counter key.
        self._in_flight: dict[str, int] = {}
        self._flush_call: Any = None
        #: Chat messages added whose seq (or failure) has not been told yet.
        self.unsettled = 0
        self._settled_waiters: list[Deferred[None]] = []

    @property
    def scheduled(self) -> bool:
        return self._flush_call is not None

    def add_record(self, channel: str, record: bytes) -> None:
        self._records.setdefault(channel, []).append(record)
        self._schedule()

    def add_chat(self, entry: ChatEntry) -> None:
        self.unsettled += 1
        parked = self._awaiting_floor.get(entry.seq_key)
        if parked is not None:
            parked[1].append(entry)  # behind the messages waiting for the same floor
        else:
            self._chat.append(entry)
        self._schedule()

    def settled(self) -> Deferred[None]:
        """Fires once every chat message added so far has its seq or its failure."""
        if not self.unsettled:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._settled_waiters.append(d)
        return d

    def flush_now(self) -> None:
        """Send at once what waits for the end of the turn (on stop)."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
            self.flush()

    def _schedule(self) -> None:
        if self._flush_call is None:
            self._flush_call = self.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """Send what this turn relays: one PUBLISH per channel, one script call
        per few hundred chat messages."""
        self._flush_call = None
        records, self._records = self._records, {}
        for channel, batch in records.items():
            d = self._publish(channel, b"".join(batch))
            d.addErrback(_publish_failed, channel)
        chat, self._chat = self._chat, []
        start = 0
        while start < len(chat):
            placeholder = chat[start].placeholder
            stop = start + 1
            limit = min(len(chat), start + MAX_SCRIPT_BATCH)
            while stop < limit and chat[stop].placeholder == placeholder:
                stop += 1
            self._send(chat[start:stop], placeholder)
            start = stop

    def _send(self, chunk: list[ChatEntry], placeholder: bytes) -> None:
        """One script call for messages whose templates share ``placeholder``."""
        args: list[Any] = [len(chunk), self.recent_size, RECENT_TTL, placeholder]
        extend = args.extend
        in_flight = self._in_flight
        for entry in chunk:
            extend((entry.seq_key, entry.recent_key, entry.channel, entry.floor,
                    entry.durable, entry.meta, entry.template))
            in_flight[entry.seq_key] = in_flight.get(entry.seq_key, 0) + 1
        try:
            numbered = self._run_script(SEQUENCE_AND_PUBLISH, args)
        except Exception as error:  # the link went down since the message was accepted
            self._not_numbered(Failure(error), chunk)
            return
        numbered.addCallbacks(
            self._numbered, self._not_numbered, callbackArgs=(chunk,), errbackArgs=(chunk,)
        )

    def _answered(self, entry: ChatEntry) -> None:
        left = self._in_flight[entry.seq_key] - 1
        if left:
            self._in_flight[entry.seq_key] = left
        else:
            del self._in_flight[entry.seq_key]

    def _numbered(self, seqs: list[Any], chunk: list[ChatEntry]) -> None:
        told = 0
        try:
            for entry, seq in zip(chunk, seqs, strict=True):
                self._answered(entry)
                if seq == NEEDS_FLOOR:
                    self._park_for_floor(entry)  # still unsettled: sent again later
                else:
                    told += 1
                    entry.deferred.callback(int(seq))
        finally:
            self._told(told)
            for entry in chunk:
                self._release(entry.seq_key)

    def _not_numbered(self, failure: Any, chunk: list[ChatEntry]) -> None:
        try:
            for entry in chunk:
                self._answered(entry)
                entry.deferred.errback(failure)
        finally:
            self._told(len(chunk))
            for entry in chunk:
                self._release(entry.seq_key)

    def _told(self, count: int) -> None:
        self.unsettled -= count
        if not self.unsettled and self._settled_waiters:
            waiters, self._settled_waiters = self._settled_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _park_for_floor(self, entry: ChatEntry) -> None:
        """Redis lost the room's counter: read the durable floor once, then number the
        room's parked messages, in order, from above it."""
        parked = self._awaiting_floor.get(entry.seq_key)
        if parked is not None:
            parked[0].append(entry)
            return
        # The room's messages not sent yet are newer than this one: they wait behind it.
        key = entry.seq_key
        unsent = [waiting for waiting in self._chat if waiting.seq_key == key]
        if unsent:
            self._chat = [waiting for waiting in self._chat if waiting.seq_key != key]
        self._awaiting_floor[key] = ([entry], unsent)
        if entry.durable_floor is None:
            self._floor_read(entry.floor, entry.seq_key)
            return
        log.info("the seq counter of chat room {room} is missing from Redis; reading its "
                 "floor from the database", room=entry.room_id)
        reading = entry.durable_floor(entry.room_id)
        reading.addCallbacks(self._floor_read, self._floor_failed, callbackArgs=(entry.seq_key,),
                             errbackArgs=(entry.seq_key,))

    def _floor_read(self, floor: int, seq_key: str) -> None:
        self._floors[seq_key] = floor
        self._release(seq_key)

    def _release(self, seq_key: str) -> None:
        """Send a parked room's messages again, numbered from above its floor, once the floor
        is read and none of the room's earlier messages is still with Redis: those come back
        needing the floor too, and join the parked ones in order first."""
        if seq_key not in self._floors or seq_key in self._in_flight:
            return
        floor = self._floors.pop(seq_key)
        answered, unsent = self._awaiting_floor.pop(seq_key, ([], []))
        for entry in answered + unsent:
            entry.durable = floor
            self._chat.append(entry)
        self._schedule()

    def _floor_failed(self, failure: Any, seq_key: str) -> None:
        log.warn("cannot read a chat room's seq floor: {error}", error=failure.getErrorMessage())
        answered, unsent = self._awaiting_floor.pop(seq_key, ([], []))
        parked = answered + unsent
        try:
            for entry in parked:
                entry.deferred.errback(failure)
        finally:
            self._told(len(parked))


def _publish_failed(failure: Any, channel: str) -> None:
    log.warn("could not relay messages on {channel} to other servers: {error}",
             channel=channel, error=failure.getErrorMessage())
