"""What the chat's features learn from subscriptions: a room entered, a user online.

Recovery, presence and unread counts all start when a client subscribes and
stop when the subscription ends, however it ends (UNSUBSCRIBE, DISCONNECT, a
dropped socket, a heart-beat timeout). The session tells every
``SubscriptionListener`` both, so none of them needs a connection hook of
its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.logger import Logger

from stomp_chat.broker import Subscription
from stomp_chat.errors import ProtocolError

log = Logger()

ROOM_TOPIC_PREFIX = "/topic/chat/room/"


class SubscriptionListener(Protocol):
    """Told of each subscription a session makes and of its end."""

    def subscribed(
        self, session: Any, subscription: Subscription, headers: Mapping[str, str]
    ) -> None:
        """The subscription is registered; ``headers`` are its SUBSCRIBE frame's.

        Raising ``ProtocolError`` answers the SUBSCRIBE with ERROR and closes.
        """

    def unsubscribed(self, session: Any, subscription: Subscription) -> None:
        """The subscription ended (for any reason); called once per subscription."""


def room_of_topic(destination: str) -> int | None:
    """The room id of ``/topic/chat/room/{id}`` exactly, else None."""
    if not destination.startswith(ROOM_TOPIC_PREFIX):
        return None
    suffix = destination[len(ROOM_TOPIC_PREFIX) :]
    if not (suffix.isascii() and suffix.isdigit()) or len(suffix) > 18:
        return None
    if suffix.startswith("0"):  # the chat publishes to the canonical form only
        return None
    return int(suffix)


@dataclass(frozen=True, slots=True)
class User:
    """Who a session speaks for, as the chat's features count people."""

    #: What ``/user/`` destinations of this user route by.
    key: str
    #: What other people see.
    name: str


def user_of(session: Any) -> User:
    """The user behind a session: its principal, or the session itself when anonymous.

    Sessions carry a ``Principal`` (``user_id``, ``name``) once authentication
    says who they are; a bare name is taken as both. An anonymous session is
    a user of its own, so two anonymous tabs are two people.
    """
    principal = getattr(session, "principal", None)
    if principal is None:
        session_id = str(session.session_id)
        return User(session_id, f"guest-{session_id[:6]}")
    if isinstance(principal, str):
        return User(principal, principal)
    return User(str(principal.user_id), str(principal.name))


def notify_subscribed(
    listeners: list[SubscriptionListener],
    session: Any,
    subscription: Subscription,
    headers: Mapping[str, str],
) -> None:
    """Tell every listener; a ProtocolError refuses the SUBSCRIBE, any other failure is
    logged and does not cost the client its connection."""
    for listener in listeners:
        try:
            listener.subscribed(session, subscription, headers)
        except ProtocolError:
            raise
        except Exception:
            log.failure("subscription listener {listener} failed on {destination}",
                        listener=listener, destination=subscription.destination)


def notify_unsubscribed(
    listeners: list[SubscriptionListener], session: Any, subscription: Subscription
) -> None:
    """Tell every listener; one failing does not keep the others from hearing it."""
    for listener in listeners:
        try:
            listener.unsubscribed(session, subscription)
        except Exception:
            log.failure("subscription listener {listener} failed on {destination}",
                        listener=listener, destination=subscription.destination)
