"""The chat's stored records: immutable, so they can cross threads and caches freely."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def utc_isoformat(moment: datetime) -> str:
    """ISO-8601 in UTC with millisecond precision and a "Z", the form JavaScript's Date parses."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Room:
    id: int
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Member:
    id: int
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One chat line; (room_id, seq) orders a room's history, message_id is globally unique."""

    room_id: int
    seq: int
    message_id: str
    type: str
    sender_id: int
    text: str
    #: Always in UTC (converted on construction); a naive time would be ambiguous.
    created_at: datetime
    #: The authenticated speaker's name; None with ``--auth none`` (and in stored history).
    sender_name: str | None = None

    def __post_init__(self) -> None:
        created_at = self.created_at
        if created_at.tzinfo is UTC:
            return
        if created_at.tzinfo is None:
            raise ValueError(f"ChatMessage.created_at must be timezone-aware: {created_at!r}")
        object.__setattr__(self, "created_at", created_at.astimezone(UTC))

    def to_json_dict(self) -> dict[str, Any]:
        """The wire shape the chat clients know (the seed's field names plus ordering data)."""
        shown: dict[str, Any] = {
            "type": self.type,
            "roomId": self.room_id,
            "detailMessage": self.text,
            "senderId": self.sender_id,
        }
        if self.sender_name is not None:
            shown["senderName"] = self.sender_name
        shown["messageId"] = self.message_id
        shown["seq"] = self.seq
        shown["createdAt"] = utc_isoformat(self.created_at)
        return shown
