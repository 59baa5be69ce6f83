"""Who is in each room, counted per user: several tabs of one person are one presence.

A user is in a room while at least one of their sessions subscribes to
``/topic/chat/room/{id}``. The first such subscription publishes a ``join``
event on ``/topic/chat/room/{id}/presence``, the end of the last one a
``leave``; subscriptions in between change nothing anyone sees. A session
that ends any way (DISCONNECT, a dropped socket, a heart-beat timeout) ends
its subscriptions, so it leaves like any other.

Each event carries the room's whole list of users, so a client never has to
reconcile events with an earlier snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stomp_chat.app.subscriptions import User, room_of_topic, user_of
from stomp_chat.broker import Broker, Subscription

PRESENCE_SUFFIX = "/presence"
PRESENCE_TOPIC = "/topic/chat/room/{room_id}" + PRESENCE_SUFFIX
JOIN = "join"
LEAVE = "leave"
_JSON_HEADERS = {"content-type": "application/json;charset=utf-8"}


@dataclass(slots=True)
class _Presence:
    """One user in one room, with the subscriptions that keep them there."""

    user: User
    subscriptions: set[Subscription] = field(default_factory=set)


class PresenceTracker:
    """Counts room subscriptions per user and announces arrivals and departures."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        #: room id -> user key -> presence, in order of arrival.
        self._rooms: dict[int, dict[str, _Presence]] = {}

    # -- SubscriptionListener ---------------------------------------------

    def subscribed(
        self, session: Any, subscription: Subscription, headers: Mapping[str, str]
    ) -> None:
        room_id = room_of_topic(subscription.destination)
        if room_id is None:
            return
        user = user_of(session)
        people = self._rooms.setdefault(room_id, {})
        presence = people.get(user.key)
        if presence is None:
            presence = people[user.key] = _Presence(user)
        first = not presence.subscriptions
        presence.subscriptions.add(subscription)
        if first:
            self._announce(room_id, JOIN, user)

    def unsubscribed(self, session: Any, subscription: Subscription) -> None:
        room_id = room_of_topic(subscription.destination)
        if room_id is None:
            return
        people = self._rooms.get(room_id)
        if people is None:
            return
        user = user_of(session)
        presence = people.get(user.key)
        if presence is None or subscription not in presence.subscriptions:
            return
        presence.subscriptions.discard(subscription)
        if presence.subscriptions:
            return
        del people[user.key]
        if not people:
            del self._rooms[room_id]
        self._announce(room_id, LEAVE, user)

    # -- queries -----------------------------------------------------------

    def users(self, room_id: int) -> list[dict[str, Any]]:
        """The users in a room, in order of arrival, with how many sessions each has there."""
        return [
            {"id": p.user.key, "name": p.user.name, "sessions": len(p.subscriptions)}
            for p in self._rooms.get(room_id, {}).values()
        ]

    def rooms_of(self, user_key: str) -> list[int]:
        return [room for room, people in self._rooms.items() if user_key in people]

    def _announce(self, room_id: int, kind: str, user: User) -> None:
        event = {
            "type": kind,
            "roomId": room_id,
            "user": {"id": user.key, "name": user.name},
            "users": self.users(room_id),
        }
        body = json.dumps(event, ensure_ascii=False).encode("utf-8")
        self.broker.publish(PRESENCE_TOPIC.format(room_id=room_id), body, _JSON_HEADERS)
