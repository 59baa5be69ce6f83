"""``GET /api/rooms/{id}/presence``: who is in a room now."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.web.server import Request

from stomp_chat.app.presence import PresenceTracker
from stomp_chat.persistence import ChatStore
from stomp_chat.web.api import ApiError, ChatApi


class PresenceApi:
    """Answers from the tracker; a room nobody is in is looked up, so unknown ids are 404."""

    def __init__(self, presence: PresenceTracker, store: ChatStore) -> None:
        self.presence = presence
        self.store = store

    def register(self, api: ChatApi) -> None:
        api.add_route(r"/rooms/(?P<room_id>[^/]+)/presence", GET=self.get)

    def get(self, request: Request, room_id: str) -> Deferred[tuple[int, Any]]:
        if not (room_id.isascii() and room_id.isdigit()) or not 0 < int(room_id) < 2**63:
            raise ApiError(400, "invalid-id", "room id must be a positive integer")
        room = int(room_id)
        users = self.presence.users(room)
        if users:
            return succeed((200, {"roomId": room, "users": users}))

        def found(known: Any) -> tuple[int, Any]:
            if known is None:
                raise ApiError(404, "unknown-room", f"room {room} does not exist")
            return 200, {"roomId": room, "users": self.presence.users(room)}

        return self.store.get_room(room).addCallback(found)
