"""Gap-free recovery: ``SUBSCRIBE /topic/chat/room/{id}`` with ``since-seq:N``.

A client that lost its connection subscribes again naming the last ``seq`` it
saw. It first receives every message with a higher seq, in order, exactly
once, then the live ones. The seam is closed on the server: the subscription
is live from the moment it is made, but its messages are held back while the
missed range loads (from the chat's in-memory cache when it covers the range,
from the database otherwise); then the range is replayed and the held
messages follow, those already replayed dropped by seq.

The first MESSAGE after such a SUBSCRIBE (replayed or live) carries ``recovery``: ``complete``,
``too-old`` (more than ``max_recovery`` messages were missed: the newest of
them follow, and older ones are for the history API), or ``failed`` (the
database could not be read: live messages follow). Replayed messages carry
``recovered:true``.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from stomp_chat.app.chat import encode_message
from stomp_chat.app.subscriptions import room_of_topic, user_of
from stomp_chat.broker import Broker, Message, Subscription
from stomp_chat.errors import ProtocolError
from stomp_chat.persistence import ChatMessage, utc_isoformat

log = Logger()

SINCE_SEQ_HEADER = "since-seq"
RECOVERY_HEADER = "recovery"
RECOVERED_HEADER = "recovered"
COMPLETE = "complete"
TOO_OLD = "too-old"
FAILED = "failed"
DEFAULT_MAX_RECOVERY = 1000
_JSON_HEADERS = {"content-type": "application/json;charset=utf-8"}


class History(Protocol):
    """The chat's history reads (``ChatService.history``): cache first, database otherwise."""

    def history(
        self, room_id: int, limit: int, before: int | None = None, after: int | None = None
    ) -> Deferred[list[ChatMessage]]: ...


class _Holding:
    """Stands in for the session on a subscription while its missed range loads.

    Keeps at most ``limit`` live messages; beyond that the oldest go, and the
    outcome becomes ``too-old``.
    """

    __slots__ = ("held", "overflowed", "session")

    def __init__(self, session: Any, limit: int) -> None:
        self.session = session
        self.held: deque[Message] = deque(maxlen=limit)
        self.overflowed = False

    def __getattr__(self, name: str) -> Any:
        # Whoever looks at subscription.subscriber (to close a revoked member's sessions,
        # say) meets the session itself.
        return getattr(self.session, name)

    def deliver(self, subscription: Subscription, message: Message) -> None:
        held = self.held
        if len(held) == held.maxlen:
            self.overflowed = True
        held.append(message)


class _Announcing:
    """Adds the recovery outcome to the first live message, then steps aside."""

    __slots__ = ("outcome", "session")

    def __init__(self, session: Any, outcome: str) -> None:
        self.session = session
        self.outcome = outcome

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)

    def deliver(self, subscription: Subscription, message: Message) -> None:
        subscription.subscriber = self.session
        self.session.deliver(subscription, _with_header(message, RECOVERY_HEADER, self.outcome))


class RoomRecovery:
    """Replays what a re-subscribing client missed, then hands it the live stream."""

    def __init__(
        self, history: History, broker: Broker, *, max_recovery: int = DEFAULT_MAX_RECOVERY
    ) -> None:
        if max_recovery <= 0:
            raise ValueError("max_recovery must be positive")
        self.history = history
        self.broker = broker
        self.max_recovery = max_recovery

    # -- SubscriptionListener ---------------------------------------------

    def subscribed(
        self, session: Any, subscription: Subscription, headers: Mapping[str, str]
    ) -> None:
        raw = headers.get(SINCE_SEQ_HEADER)
        if raw is None:
            return
        room_id = room_of_topic(subscription.destination)
        if room_id is None:
            raise ProtocolError(
                "since-seq on a destination that is not a room",
                "since-seq is only for /topic/chat/room/{id}",
            )
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
            raise ProtocolError("invalid since-seq", "since-seq must be a whole number >= 0")
        since = int(raw)
        holding = _Holding(subscription.subscriber, self.max_recovery)
        subscription.subscriber = holding
        # One more than the limit tells "exactly the limit" from "too many".
        d = self.history.history(room_id, self.max_recovery + 1, after=since)
        d.addCallback(self._loaded, room_id)
        d.addCallbacks(self._replay, self._failed, (subscription, holding, since),
                       errbackArgs=(subscription, holding, room_id))
        d.addErrback(lambda failure: log.failure(
            "recovery of room {room} failed", failure, room=room_id))

    def unsubscribed(self, session: Any, subscription: Subscription) -> None:
        """Nothing to do: a replay for an ended subscription finds it gone and stops."""

    # -- replay -----------------------------------------------------------

    def _loaded(
        self, missed: list[ChatMessage], room_id: int
    ) -> tuple[str, list[ChatMessage]] | Deferred[tuple[str, list[ChatMessage]]]:
        if len(missed) <= self.max_recovery:
            return COMPLETE, missed
        # Too far behind: the newest messages, and the client pages back for the rest.
        return self.history.history(room_id, self.max_recovery).addCallback(
            lambda newest: (TOO_OLD, newest)
        )

    def _replay(
        self,
        loaded: tuple[str, list[ChatMessage]],
        subscription: Subscription,
        holding: _Holding,
        since: int,
    ) -> None:
        outcome, missed = loaded
        if holding.overflowed:
            outcome, missed = TOO_OLD, []  # the held live messages are the newest there are
        session = holding.session
        if not self._still_subscribed(session, subscription, holding):
            return
        subscription.subscriber = session
        replay = [self._replayed(subscription.destination, m) for m in missed if m.seq > since]
        self._hand_over(session, subscription, replay, holding, since, outcome)

    def _failed(
        self, failure: Failure, subscription: Subscription, holding: _Holding, room_id: int
    ) -> None:
        log.warn("cannot recover missed messages of room {room}: {error}", room=room_id,
                 error=failure.getErrorMessage())
        session = holding.session
        if not self._still_subscribed(session, subscription, holding):
            return
        subscription.subscriber = session
        self.broker.send_to_user(
            user_of(session).key, "/user/queue/errors",
            json.dumps({"error": "recovery-failed", "message":
                        "missed messages could not be loaded; read them with the history API",
                        "destination": subscription.destination}).encode(),
            {"content-type": "application/json;charset=utf-8", "code": "recovery-failed"},
        )
        self._hand_over(session, subscription, [], holding, 0, FAILED)

    def _hand_over(
        self,
        session: Any,
        subscription: Subscription,
        replay: list[Message],
        holding: _Holding,
        since: int,
        outcome: str,
    ) -> None:
        """Deliver the replay, then the held live messages it does not already hold."""
        last = since
        frames: list[tuple[int, Message]] = [(_seq_of(m), m) for m in replay]
        if frames:
            last = frames[-1][0]
        for message in holding.held:
            seq = _seq_of(message)
            if seq > last:
                frames.append((seq, message))
                last = seq
        holding.held.clear()
        if not frames:
            # Nothing was missed: the next live message carries the outcome.
            subscription.subscriber = _Announcing(session, outcome)
            return
        for index, (_, message) in enumerate(frames):
            if index == 0:
                message = _with_header(message, RECOVERY_HEADER, outcome)
            session.deliver(subscription, message)

    def _replayed(self, destination: str, message: ChatMessage) -> Message:
        body = encode_message(message, utc_isoformat(message.created_at))
        headers = {**_JSON_HEADERS, RECOVERED_HEADER: "true"}
        return Message(destination, self.broker.new_message_id(), body, headers)

    @staticmethod
    def _still_subscribed(session: Any, subscription: Subscription, holding: _Holding) -> bool:
        """Whether the subscription is still the session's (not ended meanwhile)."""
        if subscription.subscriber is not holding:
            return False
        subscriptions = getattr(session, "subscriptions", None)
        return subscriptions is not None and subscriptions.get(subscription.id) is subscription


def _seq_of(message: Message) -> int:
    """A chat message's seq, read from its JSON body (0 if it has none)."""
    try:
        seq = json.loads(message.body).get("seq")
    except (ValueError, AttributeError):
        return 0
    return seq if isinstance(seq, int) else 0


def _with_header(message: Message, name: str, value: str) -> Message:
    """A copy of a (shared) message with one more header."""
    return Message(message.destination, message.message_id, message.body,
                   {**message.headers, name: value})
