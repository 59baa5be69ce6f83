"""``GET /api/rooms/{id}/presence``: who is in a room now."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.server import Request

from stomp_chat.app.presence import PresenceTracker
from stomp_chat.web.api import ChatApi


class PresenceApi:
    """Answers from the tracker, to whoever may read the room (the API's room rules)."""

    def __init__(self, presence: PresenceTracker, api: ChatApi) -> None:
        self.presence = presence
        self.api = api

    def register(self) -> None:
        self.api.add_route(r"/rooms/(?P<room_id>[^/]+)/presence", GET=self.get)

    def get(self, request: Request, room_id: str) -> Deferred[tuple[int, Any]]:
        def answer(shown: Any) -> Deferred[tuple[int, Any]]:
            room = shown[0].id
            return self.presence.room_users(room).addCallback(
                lambda users: (200, {"roomId": room, "users": users})
            )

        return self.api.readable_room(request, room_id).addCallback(answer)
