"""The chat's storage interface, and its database implementation put together from the
table modules.

The chat and the write-behind writer see one `ChatStore`; on a database it is
`AdbapiChatStore`, which only runs the transaction functions of rooms, members,
membership, messages, history, reservations and purge on the pool, each call bounded by
the database timeout. The in-memory twin is `memory.MemoryChatStore`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from stomp_chat.persistence import (
    history,
    members,
    membership,
    purge,
    reservations,
    rooms,
)
from stomp_chat.persistence._dialect import Dialect, dialect_of
from stomp_chat.persistence.messages import MessageBatchSaver
from stomp_chat.persistence.model import ChatMessage, Member, Room
from stomp_chat.persistence.transactions import Runner


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ChatStore(Protocol):
    """Storage used by the chat; every method returns a Deferred."""

    def create_room(self, name: str, room_id: int | None = None) -> Deferred[Room]:
        """Create a room; with an explicit id, fail with RoomAlreadyExists if it is taken."""
        ...

    def get_room(self, room_id: int) -> Deferred[Room | None]: ...

    def list_rooms(self) -> Deferred[list[Room]]:
        """All rooms, by id."""
        ...

    def ensure_room(self, room_id: int) -> Deferred[Room]:
        """The room with this id, created if missing (concurrent callers get the same room)."""
        ...

    def create_member(self, name: str, password_hash: str | None = None) -> Deferred[Member]:
        """Create a member; fails with MemberNameTaken if the name is in use."""
        ...

    def get_member(self, member_id: int) -> Deferred[Member | None]: ...

    def get_member_by_name(self, name: str) -> Deferred[Member | None]: ...

    def get_member_credentials(self, name: str) -> Deferred[tuple[Member, str | None] | None]:
        """The member and its password hash, for authenticating a CONNECT."""
        ...

    def ensure_member(self, member_id: int) -> Deferred[Member]:
        """The member with this id, created (named after the id) if missing."""
        ...

    def join_room(self, room_id: int, member_id: int) -> Deferred[bool]:
        """Add a member to a room; True if newly joined, False if already a member."""
        ...

    def leave_room(self, room_id: int, member_id: int) -> Deferred[bool]:
        """Remove a member from a room; True if it was a member."""
        ...

    def list_members(self, room_id: int) -> Deferred[list[Member]]:
        """A room's members in the order they joined."""
        ...

    def last_seq(self, room_id: int) -> Deferred[int]:
        """The highest stored seq of a room, 0 if it has no messages."""
        ...

    def delete_messages_before(self, cutoff: datetime, limit: int) -> Deferred[int]:
        """Delete at most ``limit`` messages created before ``cutoff``; how many went.

        A room's newest message always stays: the next message's seq counts from it.
        """
        ...

    def delete_message(self, room_id: int, seq: int) -> Deferred[bool]:
        """Remove one stored message; True if it was there.

        The room's seq reservation is raised to at least ``seq`` in the same
        transaction, so a removed newest message never has its seq handed out again.
        """
        ...

    def save_messages(self, messages: Sequence[ChatMessage]) -> Deferred[list[ChatMessage]]:
        """Store a batch atomically; messages already stored are skipped, so retries are safe.

        A message is identified by (room_id, seq): its message_id is not checked for
        uniqueness (the chat derives it from those two). Rooms the messages name are created
        if missing. Fires with the messages NOT stored because a different message already
        holds their (room_id, seq) (a seq collision), in batch order; normally none.
        """
        ...

    def reserve_seqs(self, room_id: int, count: int) -> Deferred[tuple[int, int, int]]:
        """Reserve `count` seqs past everything stored or reserved for a room, durably.

        Fires with (highest stored seq, reservation before, reservation now).
        """
        ...

    def extend_seq_reservation(self, room_id: int, through: int) -> Deferred[int]:
        """Raise a room's reservation to at least `through`; fires with the reservation."""
        ...

    def release_seq_reservation(
        self, room_id: int, reserved_through: int, last_seq: int
    ) -> Deferred[bool]:
        """Lower a room's reservation from `reserved_through` to `last_seq`, unless it moved
        meanwhile (then nothing changes); True if lowered."""
        ...

    def seq_floor(self, room_id: int) -> Deferred[int]:
        """The highest seq of a room stored or reserved, 0 if none."""
        ...

    def load_messages(
        self,
        room_id: int,
        limit: int,
        before_seq: int | None = None,
        after_seq: int | None = None,
    ) -> Deferred[list[ChatMessage]]:
        """Up to `limit` messages, ascending by seq.

        Only `before_seq`: the newest below it (scrolling back). Only `after_seq`: the oldest
        above it (catching up). Both: the oldest strictly between them. Neither: the newest.
        """
        ...

    def close(self) -> Deferred[None]: ...


class AdbapiChatStore:
    """`ChatStore` on an adbapi pool; the same SQL runs on SQLite and PostgreSQL.

    Transaction functions run in the pool's threads: they only use their arguments and the
    immutable dialect, never the reactor.
    """

    def __init__(
        self,
        pool: adbapi.ConnectionPool,
        dialect: str | None = None,
        now: Callable[[], datetime] = _utc_now,
        *,
        timeout: float | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self._pool = pool
        #: Every call fails with DatabaseTimeout after `timeout` seconds, whatever the
        #: database does (a host that drops packets answers nothing, ever).
        self._run = Runner(pool, timeout, clock)
        self._dialect: Dialect = dialect_of(pool, dialect)
        self._now = now
        self._batches = MessageBatchSaver(self._run, self._dialect, pool.dbapi, now)

    @property
    def pool(self) -> adbapi.ConnectionPool:
        return self._pool

    # -- rooms ---------------------------------------------------------------------------

    def create_room(self, name: str, room_id: int | None = None) -> Deferred[Room]:
        return self._run(rooms.create_room, self._dialect, name, room_id, self._now())

    def get_room(self, room_id: int) -> Deferred[Room | None]:
        return self._run(rooms.get_room, self._dialect, room_id)

    def list_rooms(self) -> Deferred[list[Room]]:
        return self._run(rooms.list_rooms, self._dialect)

    def ensure_room(self, room_id: int) -> Deferred[Room]:
        return self._run(rooms.ensure_room, self._dialect, room_id, self._now())

    # -- members -------------------------------------------------------------------------

    def create_member(self, name: str, password_hash: str | None = None) -> Deferred[Member]:
        members.check_member_name(name)
        return self._run(members.create_member, self._dialect, name, password_hash, self._now())

    def get_member(self, member_id: int) -> Deferred[Member | None]:
        return self._run(members.get_member, self._dialect, member_id)

    def get_member_by_name(self, name: str) -> Deferred[Member | None]:
        return self._run(members.get_member_by_name, self._dialect, name)

    def get_member_credentials(self, name: str) -> Deferred[tuple[Member, str | None] | None]:
        return self._run(members.get_member_credentials, self._dialect, name)

    def ensure_member(self, member_id: int) -> Deferred[Member]:
        return self._run(members.ensure_member, self._dialect, member_id, self._now())

    # -- membership ----------------------------------------------------------------------

    def join_room(self, room_id: int, member_id: int) -> Deferred[bool]:
        return self._run(membership.join_room, self._dialect, room_id, member_id, self._now())

    def leave_room(self, room_id: int, member_id: int) -> Deferred[bool]:
        return self._run(membership.leave_room, self._dialect, room_id, member_id)

    def list_members(self, room_id: int) -> Deferred[list[Member]]:
        return self._run(membership.list_members, self._dialect, room_id)

    # -- messages ------------------------------------------------------------------------

    def save_messages(self, messages: Sequence[ChatMessage]) -> Deferred[list[ChatMessage]]:
        return self._batches.save(messages)

    def last_seq(self, room_id: int) -> Deferred[int]:
        return self._run(history.last_seq, self._dialect, room_id)

    def load_messages(
        self,
        room_id: int,
        limit: int,
        before_seq: int | None = None,
        after_seq: int | None = None,
    ) -> Deferred[list[ChatMessage]]:
        history.check_history_arguments(limit)
        if limit == 0:
            return succeed([])
        return self._run(
            history.load_messages, self._dialect, room_id, limit, before_seq, after_seq
        )

    def delete_messages_before(self, cutoff: datetime, limit: int) -> Deferred[int]:
        return self._run(
            purge.delete_old_messages, self._dialect, self._dialect.time_to_db(cutoff), int(limit)
        )

    def delete_message(self, room_id: int, seq: int) -> Deferred[bool]:
        return self._run(purge.delete_message, self._dialect, room_id, seq)

    # -- seq reservations ----------------------------------------------------------------

    def reserve_seqs(self, room_id: int, count: int) -> Deferred[tuple[int, int, int]]:
        reservations.check_reservation_count(count)
        return self._run(reservations.reserve_seqs, self._dialect, room_id, count)

    def extend_seq_reservation(self, room_id: int, through: int) -> Deferred[int]:
        return self._run(reservations.raise_reservation, self._dialect, room_id, through)

    def release_seq_reservation(
        self, room_id: int, reserved_through: int, last_seq: int
    ) -> Deferred[bool]:
        return self._run(
            reservations.release_reservation, self._dialect, room_id, reserved_through, last_seq
        )

    def seq_floor(self, room_id: int) -> Deferred[int]:
        return self._run(reservations.seq_floor, self._dialect, room_id)

    def close(self) -> Deferred[None]:
        """Close the pool (after the write-behind writer has flushed); safe to call twice."""
        if self._pool.running:
            self._pool.close()
        return succeed(None)
