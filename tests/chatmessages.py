"""Messages for the store tests: each (room, seq) has its own text, id and time, so a
message that comes back compares equal only to the one that was saved."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from stomp_chat.persistence import ChatMessage

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def chat_message(
    room_id: int, seq: int, text: str | None = None, sender_id: int = 1
) -> ChatMessage:
    return ChatMessage(
        room_id=room_id,
        seq=seq,
        message_id=f"r{room_id}-m{seq}",
        type="TALK",
        sender_id=sender_id,
        text=text if text is not None else f"message {seq}",
        created_at=T0 + timedelta(milliseconds=seq),
    )


def seqs(messages: list[ChatMessage]) -> list[int]:
    return [message.seq for message in messages]
