"""The rooms table: rooms created by name or by id, looked up, listed and ensured.

Rooms are created from three directions: by name with an id the database picks, from a
client's room id, and by a saved message naming a room nobody created. Kept together here
because all three must keep generated and explicit ids from ever colliding.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from stomp_chat.persistence._dialect import Dialect
from stomp_chat.persistence.model import Room
from stomp_chat.persistence.transactions import (
    advance_id_sequence,
    execute,
    fetch_one,
    insert_with_new_id,
)


class RoomNotFound(LookupError):
    def __init__(self, room_id: int) -> None:
        super().__init__(f"no room with id {room_id}")
        self.room_id = room_id


class RoomAlreadyExists(ValueError):
    def __init__(self, room_id: int) -> None:
        super().__init__(f"a room with id {room_id} already exists")
        self.room_id = room_id


def default_room_name(room_id: int) -> str:
    return f"room {room_id}"


_ROOM_COLUMNS = "id, name, created_at"


def _room(dialect: Dialect, row: Sequence[Any]) -> Room:
    return Room(int(row[0]), row[1], dialect.time_from_db(row[2]))


# -- transaction functions (run in the pool's threads) ----------------------------------------


def create_room(
    transaction: Any,
    dialect: Dialect,
    name: str,
    room_id: int | None,
    created_at: datetime,
    private: bool = False,
) -> Room:
    """A new room (members only if `private`); with an explicit id, RoomAlreadyExists if
    it is taken."""
    stored_time = dialect.time_to_db(created_at)
    if room_id is None:
        new_id = insert_with_new_id(
            transaction,
            dialect,
            "INSERT INTO rooms (name, created_at, private) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING RETURNING id",
            (name, stored_time, private),
        )
        return Room(new_id, name, created_at.astimezone(UTC))
    execute(
        transaction,
        dialect,
        "INSERT INTO rooms (id, name, created_at, private) VALUES (?, ?, ?, ?) "
        "ON CONFLICT DO NOTHING RETURNING id",
        (room_id, name, stored_time, private),
    )
    if not transaction.fetchall():
        raise RoomAlreadyExists(room_id)
    advance_id_sequence(transaction, dialect, "rooms")
    return Room(room_id, name, created_at.astimezone(UTC))


def get_room(transaction: Any, dialect: Dialect, room_id: int) -> Room | None:
    row = fetch_one(
        transaction, dialect, f"SELECT {_ROOM_COLUMNS} FROM rooms WHERE id = ?", (room_id,)
    )
    return None if row is None else _room(dialect, row)


def list_rooms(transaction: Any, dialect: Dialect) -> list[Room]:
    execute(transaction, dialect, f"SELECT {_ROOM_COLUMNS} FROM rooms ORDER BY id")
    return [_room(dialect, row) for row in transaction.fetchall()]


def ensure_room(transaction: Any, dialect: Dialect, room_id: int, created_at: datetime) -> Room:
    existing = get_room(transaction, dialect, room_id)
    if existing is not None:
        return existing
    # A concurrent creator makes this insert wait for its commit, then do nothing.
    execute(
        transaction,
        dialect,
        "INSERT INTO rooms (id, name, created_at) VALUES (?, ?, ?) "
        "ON CONFLICT DO NOTHING RETURNING id",
        (room_id, default_room_name(room_id), dialect.time_to_db(created_at)),
    )
    if transaction.fetchall():
        advance_id_sequence(transaction, dialect, "rooms")
    room = get_room(transaction, dialect, room_id)
    assert room is not None, "the room was just inserted or already committed"
    return room


def insert_missing_rooms(
    transaction: Any, dialect: Dialect, room_ids: list[int], stored_time: Any
) -> None:
    """Create the rooms of `room_ids` that do not exist yet, named after their ids, in one
    multi-row statement (a single round trip however many rooms); `stored_time` is already
    in the database's time format."""
    placeholders = ", ".join(["(?, ?, ?)"] * len(room_ids))
    room_params: list[Any] = []
    for room_id in room_ids:
        room_params.extend((room_id, default_room_name(room_id), stored_time))
    execute(
        transaction,
        dialect,
        f"INSERT INTO rooms (id, name, created_at) VALUES {placeholders} "
        "ON CONFLICT DO NOTHING RETURNING id",
        room_params,
    )
    if transaction.fetchall():
        advance_id_sequence(transaction, dialect, "rooms")
