"""Removing stored messages, without ever letting a room hand out one of their seqs again.

Used by the retention job and ``stomp-chat-admin messages purge`` (old messages in
batches) and by an admin removing one message. A room's next seq counts from its highest
stored or reserved seq, so old messages go but each room's newest stays, and removing one
message raises the room's reservation over its seq in the same transaction.
"""

from __future__ import annotations

from typing import Any

from stomp_chat.persistence._dialect import Dialect
from stomp_chat.persistence.reservations import raise_reservation
from stomp_chat.persistence.transactions import execute


def delete_old_messages(transaction: Any, dialect: Dialect, cutoff: Any, limit: int) -> int:
    """Delete at most ``limit`` messages created before ``cutoff`` (already in the database's
    time format), keeping each room's newest; how many went. Shared by the retention job and
    ``stomp-chat-admin messages purge``."""
    transaction.execute(
        dialect.sql(
            "DELETE FROM messages WHERE (room_id, seq) IN ("
            " SELECT m.room_id, m.seq FROM messages m WHERE m.created_at < ?"
            " AND m.seq < (SELECT MAX(n.seq) FROM messages n WHERE n.room_id = m.room_id)"
            " LIMIT ?)"
        ),
        (cutoff, int(limit)),
    )
    return int(transaction.rowcount)


def delete_message(transaction: Any, dialect: Dialect, room_id: int, seq: int) -> bool:
    """Remove one message; True if it was there (its seq then stays reserved)."""
    execute(
        transaction, dialect, "DELETE FROM messages WHERE room_id = ? AND seq = ?", (room_id, seq)
    )
    deleted = transaction.rowcount > 0
    if deleted:
        raise_reservation(transaction, dialect, room_id, seq)
    return bool(deleted)
