"""Reading stored messages: a room's history page by page, and its highest seq.

The read side of the messages table, apart from saving: history is asked for by clients
scrolling back and catching up, and the highest stored seq is where a room's next seq
counts from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stomp_chat.persistence._dialect import Dialect
from stomp_chat.persistence.messages import MESSAGE_COLUMNS
from stomp_chat.persistence.model import ChatMessage
from stomp_chat.persistence.transactions import execute, fetch_one


def check_history_arguments(limit: int) -> None:
    if limit < 0:
        raise ValueError(f"history limit must not be negative, got {limit}")


def _message(dialect: Dialect, row: Sequence[Any]) -> ChatMessage:
    return ChatMessage(
        room_id=int(row[0]),
        seq=int(row[1]),
        message_id=row[2],
        type=row[3],
        sender_id=int(row[4]),
        text=row[5],
        created_at=dialect.time_from_db(row[6]),
    )


# -- transaction functions (run in the pool's threads) ----------------------------------------


def last_seq(transaction: Any, dialect: Dialect, room_id: int) -> int:
    row = fetch_one(
        transaction,
        dialect,
        "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE room_id = ?",
        (room_id,),
    )
    return int(row[0])


def load_messages(
    transaction: Any,
    dialect: Dialect,
    room_id: int,
    limit: int,
    before_seq: int | None,
    after_seq: int | None,
) -> list[ChatMessage]:
    conditions = ["room_id = ?"]
    params: list[Any] = [room_id]
    if after_seq is not None:
        conditions.append("seq > ?")
        params.append(after_seq)
    if before_seq is not None:
        conditions.append("seq < ?")
        params.append(before_seq)
    # Paging forward reads the oldest rows; otherwise the newest, read backwards along
    # the (room_id, seq) primary key and flipped to ascending here.
    newest_first = after_seq is None
    order = "DESC" if newest_first else "ASC"
    params.append(limit)
    execute(
        transaction,
        dialect,
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE {' AND '.join(conditions)} "
        f"ORDER BY seq {order} LIMIT ?",
        params,
    )
    messages = [_message(dialect, row) for row in transaction.fetchall()]
    if newest_first:
        messages.reverse()
    return messages
