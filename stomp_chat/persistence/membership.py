"""The room_members table: who has joined which room, in joining order.

A row ties a room to a member, so joining checks both exist and says which is missing;
authorization reads the same table to decide who may enter a private room.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from stomp_chat.persistence._dialect import Dialect
from stomp_chat.persistence.members import MemberNotFound, get_member, member_from_row
from stomp_chat.persistence.model import Member
from stomp_chat.persistence.rooms import RoomNotFound, get_room
from stomp_chat.persistence.transactions import execute

# -- transaction functions (run in the pool's threads) ----------------------------------------


def join_room(
    transaction: Any, dialect: Dialect, room_id: int, member_id: int, joined_at: datetime
) -> bool:
    if get_room(transaction, dialect, room_id) is None:
        raise RoomNotFound(room_id)
    if get_member(transaction, dialect, member_id) is None:
        raise MemberNotFound(member_id)
    execute(
        transaction,
        dialect,
        "INSERT INTO room_members (room_id, member_id, joined_at) VALUES (?, ?, ?) "
        "ON CONFLICT DO NOTHING RETURNING room_id",
        (room_id, member_id, dialect.time_to_db(joined_at)),
    )
    return bool(transaction.fetchall())


def leave_room(transaction: Any, dialect: Dialect, room_id: int, member_id: int) -> bool:
    execute(
        transaction,
        dialect,
        "DELETE FROM room_members WHERE room_id = ? AND member_id = ?",
        (room_id, member_id),
    )
    return bool(transaction.rowcount > 0)


def list_members(transaction: Any, dialect: Dialect, room_id: int) -> list[Member]:
    execute(
        transaction,
        dialect,
        "SELECT m.id, m.name, m.created_at FROM room_members AS rm "
        "JOIN members AS m ON m.id = rm.member_id "
        "WHERE rm.room_id = ? ORDER BY rm.joined_at, m.id",
        (room_id,),
    )
    return [member_from_row(dialect, row) for row in transaction.fetchall()]
