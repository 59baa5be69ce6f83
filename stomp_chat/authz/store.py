"""What authorization reads and writes of rooms: privacy and membership.

Membership itself lives in the chat's ``room_members`` table (a row per
member of a room); a private room has ``rooms.private`` set. Creating a room
with its creator as a member is one transaction, so a private room never
exists, even for a moment, without the member who can add others.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from stomp_chat.persistence import MemoryChatStore, Room, rooms
from stomp_chat.persistence._dialect import Dialect, dialect_of
from stomp_chat.persistence.transactions import Runner, execute, fetch_one


def _utc_now() -> datetime:
    return datetime.now(UTC)


class RoomAccessStore(Protocol):
    """Room privacy and membership look-ups; every method returns a Deferred."""

    def room_privacy(self, room_id: int) -> Deferred[bool | None]:
        """Whether the room is private; None if there is no such room."""
        ...

    def is_member(self, room_id: int, member_id: int) -> Deferred[bool]: ...

    def create_room(
        self, name: str, room_id: int | None, private: bool, creator: int | None
    ) -> Deferred[Room]:
        """Create a room and make ``creator`` (a member id) its first member, atomically.

        With an explicit id, fail with RoomAlreadyExists if it is taken.
        """
        ...

    def rooms_overview(self, member_id: int | None) -> Deferred[dict[int, tuple[bool, bool]]]:
        """Every room's id -> (private, whether ``member_id`` is a member)."""
        ...


class AdbapiRoomAccessStore:
    """``RoomAccessStore`` on the chat's adbapi pool (SQLite or PostgreSQL); with a
    `timeout`, every call fails with DatabaseTimeout past it, as the chat's store does."""

    def __init__(
        self,
        pool: adbapi.ConnectionPool,
        dialect: str | None = None,
        now: Callable[[], datetime] = _utc_now,
        *,
        timeout: float | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self._run = Runner(pool, timeout, clock)
        self._dialect: Dialect = dialect_of(pool, dialect)
        self._now = now

    def room_privacy(self, room_id: int) -> Deferred[bool | None]:
        return self._run(_room_privacy, self._dialect, room_id)

    def is_member(self, room_id: int, member_id: int) -> Deferred[bool]:
        return self._run(_is_member, self._dialect, room_id, member_id)

    def create_room(
        self, name: str, room_id: int | None, private: bool, creator: int | None
    ) -> Deferred[Room]:
        return self._run(
            _create_room, self._dialect, name, room_id, private, creator, self._now()
        )

    def rooms_overview(self, member_id: int | None) -> Deferred[dict[int, tuple[bool, bool]]]:
        return self._run(_rooms_overview, self._dialect, member_id)


# -- transaction functions (run in the pool's threads) ----------------------------------------


def _room_privacy(transaction: Any, dialect: Dialect, room_id: int) -> bool | None:
    row = fetch_one(transaction, dialect, "SELECT private FROM rooms WHERE id = ?", (room_id,))
    return None if row is None else bool(row[0])


def _is_member(transaction: Any, dialect: Dialect, room_id: int, member_id: int) -> bool:
    row = fetch_one(
        transaction,
        dialect,
        "SELECT 1 FROM room_members WHERE room_id = ? AND member_id = ?",
        (room_id, member_id),
    )
    return row is not None


def _create_room(
    transaction: Any,
    dialect: Dialect,
    name: str,
    room_id: int | None,
    private: bool,
    creator: int | None,
    created_at: datetime,
) -> Room:
    room = rooms.create_room(transaction, dialect, name, room_id, created_at, private)
    if creator is not None:
        execute(
            transaction,
            dialect,
            "INSERT INTO room_members (room_id, member_id, joined_at) VALUES (?, ?, ?)",
            (room.id, creator, dialect.time_to_db(created_at)),
        )
    return room


def _rooms_overview(
    transaction: Any, dialect: Dialect, member_id: int | None
) -> dict[int, tuple[bool, bool]]:
    execute(
        transaction,
        dialect,
        "SELECT r.id, r.private, EXISTS (SELECT 1 FROM room_members AS rm "
        "WHERE rm.room_id = r.id AND rm.member_id = ?) FROM rooms AS r",
        (member_id if member_id is not None else 0,),
    )
    return {int(row[0]): (bool(row[1]), bool(row[2])) for row in transaction.fetchall()}


class MemoryRoomAccessStore:
    """``RoomAccessStore`` beside a ``MemoryChatStore``, for tests of the layers above."""

    def __init__(self, chat_store: MemoryChatStore) -> None:
        self.chat_store = chat_store
        self._private: set[int] = set()

    def _value(self, deferred: Deferred[Any]) -> Any:
        """The in-memory store answers at once: take the result out of its Deferred."""
        results: list[Any] = []
        deferred.addBoth(results.append)
        return results[0]

    def room_privacy(self, room_id: int) -> Deferred[bool | None]:
        room = self._value(self.chat_store.get_room(room_id))
        return succeed(None if room is None else room_id in self._private)

    def is_member(self, room_id: int, member_id: int) -> Deferred[bool]:
        members = self._value(self.chat_store.list_members(room_id))
        return succeed(any(member.id == member_id for member in members))

    def create_room(
        self, name: str, room_id: int | None, private: bool, creator: int | None
    ) -> Deferred[Room]:
        if creator is not None and self._value(self.chat_store.get_member(creator)) is None:
            return fail(ValueError(f"no member {creator}"))
        room = self._value(self.chat_store.create_room(name, room_id))
        if not isinstance(room, Room):
            return fail(room)
        if private:
            self._private.add(room.id)
        if creator is not None:
            self._value(self.chat_store.join_room(room.id, creator))
        return succeed(room)

    def rooms_overview(self, member_id: int | None) -> Deferred[dict[int, tuple[bool, bool]]]:
        overview = {}
        for room in self._value(self.chat_store.list_rooms()):
            members = self._value(self.chat_store.list_members(room.id))
            overview[room.id] = (
                room.id in self._private,
                any(member.id == member_id for member in members),
            )
        return succeed(overview)
