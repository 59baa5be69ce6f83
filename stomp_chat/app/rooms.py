"""The chat's active rooms in memory: each room's numbering and recent messages, and the
bounded, least-recently-used set of them that the chat keeps.

A room leaves memory when it has been idle for a while or when too many rooms are active;
its next message loads it again from the database.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterator

from stomp_chat.persistence import ChatMessage

ROOM_TOPIC = "/topic/chat/room/{room_id}"

#: Seqs reserved for a room in one database write, at first; the block grows while a room
#: is busy (so a hot room writes its reservation about once a second) and shrinks again.
MIN_SEQ_BLOCK = 64
MAX_SEQ_BLOCK = 65_536
#: A room that needs a new block sooner than this after the last one gets a bigger block.
SEQ_BLOCK_PERIOD = 1.0

DEFAULT_ROOM_IDLE_SECONDS = 600.0
DEFAULT_MAX_ACTIVE_ROOMS = 10_000


class RoomState:
    """An active room: its last sequence number, the durable reservation above it, and its
    recent messages.

    ``reserved_through`` is the highest seq written to the database as reserved: a seq is
    handed out only at or below it, so a restart after a crash starts past every seq that
    may have been broadcast.
    """

    __slots__ = (
        "block",
        "last_seq",
        "last_used",
        "recent",
        "reserved_at",
        "reservation_failures",
        "reserved_through",
        "reserving",
        "room_id",
        "topic",
    )

    def __init__(
        self,
        room_id: int,
        last_seq: int,
        recent: list[ChatMessage],
        size: int,
        reserved_through: int | None = None,
    ) -> None:
        self.room_id = room_id
        self.last_seq = last_seq
        self.recent: deque[ChatMessage] = deque(recent, maxlen=size)
        self.topic = ROOM_TOPIC.format(room_id=room_id)
        self.reserved_through = last_seq if reserved_through is None else reserved_through
        #: Whether a reservation is being written now (or retried after a failure).
        self.reserving = False
        self.reservation_failures = 0
        self.block = MIN_SEQ_BLOCK
        self.reserved_at = float("-inf")
        self.last_used = 0.0

    @property
    def has_seq(self) -> bool:
        """Whether the next seq is already reserved."""
        return self.last_seq < self.reserved_through

    def wants_reservation(self) -> bool:
        """Whether to reserve the next block now, ahead of need."""
        return not self.reserving and self.reserved_through - self.last_seq <= self.block // 2

    def next_reservation(self, now: float) -> int:
        """The seq to reserve through next, sizing the block by how busy the room is."""
        if now - self.reserved_at < SEQ_BLOCK_PERIOD:
            self.block = min(self.block * 2, MAX_SEQ_BLOCK)
        else:
            self.block = max(MIN_SEQ_BLOCK, self.block // 2)
        self.reserved_at = now
        return max(self.reserved_through, self.last_seq) + self.block

    def remember(self, message: ChatMessage) -> None:
        """Keep a message in the cache, in seq order."""
        recent = self.recent
        if not recent or message.seq > recent[-1].seq:
            recent.append(message)
        elif all(m.seq != message.seq for m in recent):
            ordered = sorted([*recent, message], key=lambda m: m.seq)
            recent.clear()
            recent.extend(ordered[-(recent.maxlen or len(ordered)) :])
        if message.seq > self.last_seq:
            self.last_seq = message.seq

    def page(self, limit: int, before: int | None, after: int | None) -> list[ChatMessage] | None:
        """The requested history page if the cache holds all of it, else None.

        The cache answers only when it holds an unbroken run of seqs ending at the last
        one; otherwise (a gap left by a crash, a relayed message missed) the database does.
        """
        recent = self.recent
        if recent and (
            recent[-1].seq != self.last_seq or recent[-1].seq - recent[0].seq + 1 != len(recent)
        ):
            return None
        oldest = recent[0].seq if recent else self.last_seq + 1
        complete = oldest <= 1
        if after is not None:
            wanted_from = after + 1
            upto = min(self.last_seq, after + limit)
        else:
            upto = self.last_seq if before is None else min(self.last_seq, before - 1)
            wanted_from = max(1, upto - limit + 1)
        if upto < wanted_from:
            return []
        if not complete and wanted_from < oldest:
            return None
        return [m for m in recent if wanted_from <= m.seq <= upto]


class ActiveRooms:
    """The rooms kept in memory, least recently used first.

    `evictable` says whether a room may leave now (not while messages wait on it);
    `on_evict` is told of every room that leaves.
    """

    def __init__(
        self,
        idle_seconds: float = DEFAULT_ROOM_IDLE_SECONDS,
        max_rooms: int = DEFAULT_MAX_ACTIVE_ROOMS,
        *,
        evictable: Callable[[RoomState], bool] = lambda state: True,
        on_evict: Callable[[RoomState], object] = lambda state: None,
    ) -> None:
        if idle_seconds <= 0 or max_rooms < 1:
            raise ValueError("need idle_seconds > 0 and max_rooms >= 1")
        self.idle_seconds = idle_seconds
        self.max_rooms = max_rooms
        self._evictable = evictable
        self._on_evict = on_evict
        self._rooms: OrderedDict[int, RoomState] = OrderedDict()
        #: When idle rooms were last looked for.
        self._swept_at = float("-inf")
        self.evicted_count = 0

    def __len__(self) -> int:
        return len(self._rooms)

    def __iter__(self) -> Iterator[RoomState]:
        return iter(list(self._rooms.values()))

    def peek(self, room_id: int) -> RoomState | None:
        """The room, if active, without counting this as a use."""
        return self._rooms.get(room_id)

    def use(self, room_id: int, now: float) -> RoomState | None:
        """The room, if active, now the most recently used; idle rooms are evicted first.

        The order is refreshed at most once a second per room (the chat path calls this
        for every message), which is all the precision eviction needs.
        """
        if now - self._swept_at >= 1.0:
            self.evict_idle(now)
        state = self._rooms.get(room_id)
        if state is not None:
            if now - state.last_used >= 1.0:
                self._rooms.move_to_end(room_id)
            state.last_used = now
        return state

    def add(self, state: RoomState, now: float) -> None:
        """Make a room active, evicting the least recently used beyond `max_rooms`."""
        state.last_used = now
        self._rooms[state.room_id] = state
        self._rooms.move_to_end(state.room_id)
        if len(self._rooms) > self.max_rooms:
            for candidate in list(self._rooms.values()):
                if len(self._rooms) <= self.max_rooms:
                    break
                if candidate is not state and self._evictable(candidate):
                    self._evict(candidate)

    def remove(self, room_id: int) -> RoomState | None:
        return self._rooms.pop(room_id, None)

    def evict_idle(self, now: float) -> None:
        """Evict rooms idle longer than `idle_seconds`; looks at most once a second."""
        if now - self._swept_at < 1.0:
            return
        self._swept_at = now
        cutoff = now - self.idle_seconds
        for state in list(self._rooms.values()):
            if state.last_used > cutoff:
                break  # the rest were used more recently
            if self._evictable(state):
                self._evict(state)

    def _evict(self, state: RoomState) -> None:
        del self._rooms[state.room_id]
        self.evicted_count += 1
        self._on_evict(state)
