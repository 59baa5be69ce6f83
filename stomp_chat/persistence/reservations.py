"""Seq reservations: the room_seq_reservations table, a durable high-water mark per room.

A server hands out a room's seqs before the messages holding them are stored (they are
written behind), so it reserves a block first: after a crash or on another server, the
next seqs start past everything stored *or* reserved, and a seq is never given twice.
"""

from __future__ import annotations

from typing import Any

from stomp_chat.persistence import history
from stomp_chat.persistence._dialect import Dialect
from stomp_chat.persistence.transactions import execute, fetch_one


def check_reservation_count(count: int) -> None:
    if count < 1:
        raise ValueError(f"reserve at least one seq, not {count}")


# -- transaction functions (run in the pool's threads) ----------------------------------------


def reserve_seqs(
    transaction: Any, dialect: Dialect, room_id: int, count: int
) -> tuple[int, int, int]:
    stored = history.last_seq(transaction, dialect, room_id)
    before = _reserved_through(transaction, dialect, room_id)
    through = raise_reservation(transaction, dialect, room_id, max(stored, before) + count)
    return stored, before, through


def _reserved_through(transaction: Any, dialect: Dialect, room_id: int) -> int:
    row = fetch_one(
        transaction,
        dialect,
        "SELECT reserved_through FROM room_seq_reservations WHERE room_id = ?",
        (room_id,),
    )
    return 0 if row is None else int(row[0])


def raise_reservation(transaction: Any, dialect: Dialect, room_id: int, through: int) -> int:
    """Raise a room's reservation to at least `through`; the reservation now."""
    execute(
        transaction,
        dialect,
        "INSERT INTO room_seq_reservations (room_id, reserved_through) VALUES (?, ?) "
        "ON CONFLICT (room_id) DO UPDATE SET reserved_through = CASE "
        "WHEN excluded.reserved_through > room_seq_reservations.reserved_through "
        "THEN excluded.reserved_through "
        "ELSE room_seq_reservations.reserved_through END "
        "RETURNING reserved_through",
        (room_id, through),
    )
    return int(transaction.fetchall()[0][0])


def release_reservation(
    transaction: Any, dialect: Dialect, room_id: int, reserved_through: int, last_seq: int
) -> bool:
    execute(
        transaction,
        dialect,
        "UPDATE room_seq_reservations SET reserved_through = ? "
        "WHERE room_id = ? AND reserved_through = ?",
        (last_seq, room_id, reserved_through),
    )
    return bool(transaction.rowcount > 0)


def seq_floor(transaction: Any, dialect: Dialect, room_id: int) -> int:
    return max(
        history.last_seq(transaction, dialect, room_id),
        _reserved_through(transaction, dialect, room_id),
    )
