"""The subscription listeners' seam: which destinations are rooms, who a session is, and how
the session tells listeners of subscriptions made and ended, however they end."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from stomp_chat.app.subscriptions import (
    User,
    notify_subscribed,
    notify_unsubscribed,
    room_of_topic,
    user_of,
)
from stomp_chat.broker import Subscription
from stomp_chat.errors import ProtocolError
from stomp_chat.identity import Principal
from tests.stompfakes import Client, make_context


class Recording:
    """A listener that records what it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def subscribed(self, session: Any, subscription: Subscription,
                   headers: Mapping[str, str]) -> None:
        self.events.append(("subscribed", subscription.id, headers.get("x-extra", "")))

    def unsubscribed(self, session: Any, subscription: Subscription) -> None:
        self.events.append(("unsubscribed", subscription.id, ""))


class Broken:
    """A listener with a bug."""

    def subscribed(self, session: Any, subscription: Subscription,
                   headers: Mapping[str, str]) -> None:
        raise RuntimeError("bug")

    def unsubscribed(self, session: Any, subscription: Subscription) -> None:
        raise RuntimeError("bug")


class Refusing(Recording):
    def subscribed(self, session: Any, subscription: Subscription,
                   headers: Mapping[str, str]) -> None:
        raise ProtocolError("refused here")


@pytest.mark.parametrize(
    ("destination", "room"),
    [
        ("/topic/chat/room/1", 1),
        ("/topic/chat/room/42", 42),
        ("/topic/chat/room/0", None),
        ("/topic/chat/room/", None),
        ("/topic/chat/room/1/presence", None),
        ("/topic/chat/room/x", None),
        ("/topic/chat/room/١", None),
        ("/topic/chat/room/" + "9" * 19, None),
        ("/queue/chat/room/1", None),
    ],
)
def test_room_topics_are_recognised_exactly(destination: str, room: int | None) -> None:
    """Only /topic/chat/room/{positive id} names a room."""
    assert room_of_topic(destination) == room


@pytest.mark.parametrize("destination", ["/topic/chat/room/01", "/topic/chat/room/007"])
def test_a_room_id_with_leading_zeros_names_no_room(destination: str) -> None:
    """The chat publishes to /topic/chat/room/1 only, so /topic/chat/room/01 is no room: a
    subscriber there is not present in room 1 and recovers nothing it would not hear live."""
    assert room_of_topic(destination) is None


def test_a_user_is_the_principal_or_the_session() -> None:
    """A principal's id and name make the user; an anonymous session is a guest of its own."""

    class Session:
        session_id = "abcdef123456"
        principal: Any = None

    session = Session()
    assert user_of(session) == User("abcdef123456", "guest-abcdef")
    session.principal = Principal("u-1", "Alice")
    assert user_of(session) == User("u-1", "Alice")


def _served(*listeners: Any) -> Client:
    context = make_context(clock=Clock())
    context.subscription_listeners.extend(listeners)
    client = Client(context)
    client.connect()
    return client


def test_listeners_hear_subscribe_unsubscribe_and_close() -> None:
    """SUBSCRIBE (with its headers), UNSUBSCRIBE and the end of the session each reach listeners."""
    recording = Recording()
    client = _served(recording)
    client.send("SUBSCRIBE", {"id": "a", "destination": "/topic/x", "x-extra": "1"})
    client.send("SUBSCRIBE", {"id": "b", "destination": "/topic/y"})
    client.send("UNSUBSCRIBE", {"id": "a"})
    client.session.connection_lost()
    assert recording.events == [
        ("subscribed", "a", "1"), ("subscribed", "b", ""),
        ("unsubscribed", "a", ""), ("unsubscribed", "b", ""),
    ]


def test_a_failing_listener_costs_neither_the_connection_nor_the_others() -> None:
    """A listener that raises is logged; later listeners still hear, the client stays connected."""
    recording = Recording()
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        client = _served(Broken(), recording)
        client.send("SUBSCRIBE", {"id": "a", "destination": "/topic/x", "receipt": "r"})
        assert [f.command for f in client.frames()] == ["RECEIPT"]
        client.send("UNSUBSCRIBE", {"id": "a"})
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert not client.closed
    assert recording.events == [("subscribed", "a", ""), ("unsubscribed", "a", "")]
    failures = [e["log_failure"] for e in logged if "log_failure" in e]
    assert [str(f.value) for f in failures] == ["bug", "bug"]


def test_a_protocol_error_from_a_listener_refuses_the_subscribe() -> None:
    """A listener may refuse a SUBSCRIBE with ProtocolError: ERROR, close, and it is released."""
    recording = Recording()
    client = _served(Refusing(), recording)
    client.send("SUBSCRIBE", {"id": "a", "destination": "/topic/x"})
    error = client.frames()[-1]
    assert error.command == "ERROR" and error.headers["message"] == "refused here"
    assert client.closed
    assert recording.events == [("unsubscribed", "a", "")]


def test_notify_helpers_isolate_each_listener() -> None:
    """notify_* call every listener in order, whatever an earlier one raised (but ProtocolError)."""
    recording = Recording()
    subscription = Subscription(object(), "s", "/topic/x")  # type: ignore[arg-type]
    notify_subscribed([Broken(), recording], object(), subscription, {})
    notify_unsubscribed([Broken(), recording], object(), subscription)
    assert recording.events == [("subscribed", "s", ""), ("unsubscribed", "s", "")]
    with pytest.raises(ProtocolError):
        notify_subscribed([Refusing()], object(), subscription, {})
