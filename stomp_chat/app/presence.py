"""Who is in each room, counted per user: several tabs of one person are one presence.

A user is in a room while at least one of their sessions subscribes to
``/topic/chat/room/{id}``. The first such subscription publishes a ``join``
event on ``/topic/chat/room/{id}/presence``, the end of the last one a
``leave``; subscriptions in between change nothing anyone sees. A session
that ends any way (DISCONNECT, a dropped socket, a heart-beat timeout) ends
its subscriptions, so it leaves like any other.

Each event carries the room's whole list of users, so a client never has to
reconcile events with an earlier snapshot. That makes each event cost the
size of the room for every watcher, so a room's events are coalesced: the
first change goes out at once, and the changes of the next
``PRESENCE_WINDOW`` seconds become one trailing event with the latest list
(its ``type`` and ``user`` name the latest change), or none at all when the
room's users are the same as in the last event (a join and a leave that
cancel out). A client toggling SUBSCRIBE/UNSUBSCRIBE on a room therefore
costs each watcher at most one list per window, however fast it toggles.

In cluster mode a ``ClusterPresence`` (stomp_chat.cluster.presence) counts
the user's sessions on every server: join and leave then mean the first
arrival and the last departure anywhere, and the list is the cluster's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from stomp_chat.app.subscriptions import User, room_of_topic, user_of
from stomp_chat.broker import Broker, Subscription

PRESENCE_SUFFIX = "/presence"
PRESENCE_TOPIC = "/topic/chat/room/{room_id}" + PRESENCE_SUFFIX
JOIN = "join"
LEAVE = "leave"
_JSON_HEADERS = {"content-type": "application/json;charset=utf-8"}
#: Seconds over which a room's presence changes after the first are gathered into one
#: event: short enough that people see arrivals at once, long enough that a client
#: toggling its subscription cannot make every watcher receive the room's list per frame.
PRESENCE_WINDOW = 0.25

log = Logger()


class SharedPresence(Protocol):
    """Presence counted across servers (cluster mode)."""

    announce: Any

    def change(self, room_id: int, user_key: str, name: str,
               count: int) -> Deferred[tuple[str, list[dict[str, Any]]]]: ...

    def users(self, room_id: int) -> Deferred[list[dict[str, Any]]]: ...


@dataclass(slots=True)
class _Presence:
    """One user in one room, with the subscriptions that keep them there."""

    user: User
    subscriptions: set[Subscription] = field(default_factory=set)


#: Who is in a room as its events show it: (id, name) in order of arrival.
_Membership = list[tuple[str, str]]


def _membership(users: list[dict[str, Any]]) -> _Membership:
    return [(str(user.get("id")), str(user.get("name"))) for user in users]


@dataclass(slots=True)
class _Window:
    """A room whose last event went out less than ``PRESENCE_WINDOW`` ago."""

    closes: IDelayedCall
    #: Who the last event listed.
    published: _Membership
    #: The latest change since, as ``_publish`` arguments: the trailing event.
    pending: tuple[str, str, str, list[dict[str, Any]]] | None = None


class PresenceTracker:
    """Counts room subscriptions per user and announces arrivals and departures."""

    def __init__(
        self,
        broker: Broker,
        shared: SharedPresence | None = None,
        *,
        clock: IReactorTime,
        window: float = PRESENCE_WINDOW,
    ) -> None:
        self.broker = broker
        self.clock = clock
        self.window = window
        #: room id -> user key -> presence, in order of arrival.
        self._rooms: dict[int, dict[str, _Presence]] = {}
        #: Rooms whose events are being coalesced, until their window closes.
        self._windows: dict[int, _Window] = {}
        self.shared = shared
        if shared is not None:
            shared.announce = self._publish

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
        if self.shared is not None:
            self._share(room_id, user, len(presence.subscriptions), JOIN if first else None)
        elif first:
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
            if self.shared is not None:
                self._share(room_id, user, len(presence.subscriptions), None)
            return
        del people[user.key]
        if not people:
            del self._rooms[room_id]
        if self.shared is not None:
            self._share(room_id, user, 0, LEAVE)
        else:
            self._announce(room_id, LEAVE, user)

    def _share(self, room_id: int, user: User, count: int, local_event: str | None) -> None:
        """Cluster mode: tell the cluster this server's count; announce what it answers,
        or, while it cannot answer, what this server saw."""
        assert self.shared is not None

        def answered(answer: tuple[str, list[dict[str, Any]]]) -> None:
            kind, users = answer
            if kind:
                self._publish(room_id, kind, user.key, user.name, users)

        def unanswered(failure: Any) -> None:
            log.warn("presence in room {room} is this server's alone for now: {error}",
                     room=room_id, error=failure.getErrorMessage())
            if local_event is not None:
                self._announce(room_id, local_event, user)

        self.shared.change(room_id, user.key, user.name, count).addCallbacks(
            answered, unanswered
        )

    # -- queries -----------------------------------------------------------

    def users(self, room_id: int) -> list[dict[str, Any]]:
        """The users in a room, in order of arrival, with how many sessions each has there."""
        return [
            {"id": p.user.key, "name": p.user.name, "sessions": len(p.subscriptions)}
            for p in self._rooms.get(room_id, {}).values()
        ]

    def room_users(self, room_id: int) -> Deferred[list[dict[str, Any]]]:
        """The users in a room on every server (cluster mode), else on this one."""
        if self.shared is None:
            return maybeDeferred(self.users, room_id)
        return self.shared.users(room_id).addErrback(lambda _: self.users(room_id))

    def rooms_of(self, user_key: str) -> list[int]:
        return [room for room, people in self._rooms.items() if user_key in people]

    def _announce(self, room_id: int, kind: str, user: User) -> None:
        self._publish(room_id, kind, user.key, user.name, self.users(room_id))

    def _publish(self, room_id: int, kind: str, user_key: str, name: str,
                 users: list[dict[str, Any]]) -> None:
        """Send a room's event now, or, within its window, keep it as the trailing one."""
        window = self._windows.get(room_id)
        if window is not None:
            window.pending = (kind, user_key, name, users)
            return
        self._send(room_id, kind, user_key, name, users)

    def _window_closes(self, room_id: int) -> None:
        window = self._windows.pop(room_id)
        if window.pending is None:
            return
        kind, user_key, name, users = window.pending
        if _membership(users) == window.published:
            return  # changes that cancelled out: nobody needs to hear of them
        self._send(room_id, kind, user_key, name, users)

    def _send(self, room_id: int, kind: str, user_key: str, name: str,
              users: list[dict[str, Any]]) -> None:
        self._windows[room_id] = _Window(
            self.clock.callLater(self.window, self._window_closes, room_id), _membership(users)
        )
        event = {
            "type": kind,
            "roomId": room_id,
            "user": {"id": user_key, "name": name},
            "users": users,
        }
        body = json.dumps(event, ensure_ascii=False).encode("utf-8")
        self.broker.publish(PRESENCE_TOPIC.format(room_id=room_id), body, _JSON_HEADERS)
