"""Ending the subscriptions of someone who left a private room.

Authorization is decided when a client subscribes; a member who leaves a
private room (or is removed by an admin) would otherwise go on reading it
through a subscription made while still a member. On leaving, each of that
user's sessions subscribed to the room's topic or its presence topic on this
server gets an ERROR
(``access revoked``) and is closed; a client that reconnects cannot subscribe
again. Sessions on other servers of a cluster keep their subscription until
they reconnect.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from stomp_chat.app.chat import ROOM_TOPIC
from stomp_chat.app.presence import PRESENCE_SUFFIX
from stomp_chat.broker import Broker
from stomp_chat.persistence import ChatStore

log = Logger()

ACCESS_REVOKED = "access revoked"


class SubscriptionRevoker:
    """Closes the sessions of a member who left a private room, on this server."""

    def __init__(self, broker: Broker, chat_store: ChatStore) -> None:
        self.broker = broker
        self.chat_store = chat_store

    def member_left(self, room_id: int, member_id: int) -> Deferred[int]:
        """Fires with how many sessions were closed (0 if the member could not be found)."""
        d = self.chat_store.get_member(member_id).addCallback(self._close, room_id)
        return d.addErrback(self._lookup_failed, room_id, member_id)

    @staticmethod
    def _lookup_failed(failure: Failure, room_id: int, member_id: int) -> int:
        log.failure("could not end member {member}'s subscriptions to room {room}", failure,
                    member=member_id, room=room_id)
        return 0

    def _close(self, member: Any, room_id: int) -> int:
        if member is None:
            return 0
        topic = ROOM_TOPIC.format(room_id=room_id)
        subscriptions = [
            *self.broker.topic_subscriptions(topic),
            *self.broker.topic_subscriptions(topic + PRESENCE_SUFFIX),
        ]
        closed = 0
        seen: set[int] = set()
        for subscription in subscriptions:
            session: Any = subscription.subscriber
            principal = getattr(session, "principal", None)
            if principal is None or principal.user_id != member.name or principal.is_admin:
                continue
            if id(session) in seen:
                continue
            seen.add(id(session))
            try:
                session.fail(ACCESS_REVOKED, f"you are no longer a member of room {room_id}")
            except Exception:  # one session's failure must not spare the others
                log.failure("could not close session of {user}", user=member.name)
                continue
            closed += 1
        if closed:
            log.info("closed {count} session(s) of {user}, who left private room {room}",
                     count=closed, user=member.name, room=room_id)
        return closed
