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
        return self.api.readable_room(request, room_id).addCallback(
            lambda shown: (200, {"roomId": shown[0].id, "users": self.presence.users(shown[0].id)})
        )
