"""Leaving a private room ends that user's subscriptions to it on this server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.task import Clock

from stomp_chat.authz.revoke import ACCESS_REVOKED, SubscriptionRevoker
from stomp_chat.authz.rooms import RoomAccess
from stomp_chat.authz.store import MemoryRoomAccessStore
from stomp_chat.broker import Broker, Message, Subscription
from stomp_chat.identity import Principal
from stomp_chat.persistence import MemoryChatStore


@dataclass
class Session:
    """A subscriber that, like a session, has a principal and can be failed."""

    principal: Principal | None
    failures: list[tuple[str, str]] = field(default_factory=list)

    def deliver(self, subscription: Subscription, message: Message) -> None:
        pass

    def fail(self, message: str, detail: str = "") -> None:
        self.failures.append((message, detail))


class Broken(Session):
    def fail(self, message: str, detail: str = "") -> None:
        raise RuntimeError("transport gone")


def value(d: Any) -> Any:
    """The result of an already fired Deferred, or a value known at once."""
    if not hasattr(d, "addBoth"):
        return d
    box: list[Any] = []
    d.addBoth(box.append)
    return box[0]


def setup() -> tuple[RoomAccess, Broker, MemoryChatStore]:
    store, broker = MemoryChatStore(), Broker()
    rooms = RoomAccess(store, MemoryRoomAccessStore(store), Clock())
    rooms.left_private_room.append(SubscriptionRevoker(broker, store).member_left)
    return rooms, broker, store


def subscribe(broker: Broker, session: Session, room_id: int) -> None:
    topic = f"/topic/chat/room/{room_id}"
    user = session.principal.user_id if session.principal else "anon"
    broker.subscribe(Subscription(session, topic, topic), user)


def test_the_leaver_is_closed_and_no_one_else() -> None:
    """Every session of the leaver subscribed to the room gets ERROR access revoked; other
    members, admins and other rooms are left alone; a failing session does not stop it."""
    rooms, broker, _ = setup()
    alice, bob = Principal("alice", "Alice"), Principal("bob", "Bob")
    room = value(rooms.create_room("team", None, True, alice)).id
    other = value(rooms.create_room("other", None, True, bob)).id
    bob_id = value(rooms.member_id(bob))
    value(rooms.join(room, bob_id))
    tab1, tab2, elsewhere = Session(bob), Session(bob), Session(bob)
    broken = Broken(bob)
    keep = [Session(alice), Session(Principal("bob", "Bob", frozenset({"admin"}))),
            Session(None)]
    for session in (broken, tab1, tab2, *keep):
        subscribe(broker, session, room)
    subscribe(broker, elsewhere, other)
    assert value(rooms.leave(room, bob_id)) is True
    assert [f[0] for f in tab1.failures + tab2.failures] == [ACCESS_REVOKED] * 2
    assert all(session.failures == [] for session in (*keep, elsewhere))


def test_leaving_a_public_room_closes_nothing() -> None:
    """A public room may be read by anyone: leaving it ends no subscription."""
    rooms, broker, store = setup()
    bob = Principal("bob", "Bob")
    room = value(store.create_room("lobby")).id
    bob_id = value(rooms.member_id(bob))
    value(rooms.join(room, bob_id))
    session = Session(bob)
    subscribe(broker, session, room)
    value(rooms.leave(room, bob_id))
    assert session.failures == []


def test_an_unknown_member_closes_nothing() -> None:
    """A member id that does not exist names no session."""
    _, broker, store = setup()
    assert value(SubscriptionRevoker(broker, store).member_left(1, 999)) == 0


def test_the_leaver_stops_watching_who_is_in_the_room() -> None:
    """A leaver subscribed only to the room's presence topic is closed too (it names who comes
    and goes in a private room); a session on both topics is closed once."""
    rooms, broker, _ = setup()
    alice, bob = Principal("alice", "Alice"), Principal("bob", "Bob")
    room = value(rooms.create_room("team", None, True, alice)).id
    bob_id = value(rooms.member_id(bob))
    value(rooms.join(room, bob_id))
    watcher, both = Session(bob), Session(bob)
    presence = f"/topic/chat/room/{room}/presence"
    broker.subscribe(Subscription(watcher, presence, presence), "bob")
    subscribe(broker, both, room)
    broker.subscribe(Subscription(both, "p", presence), "bob")
    assert value(rooms.leave(room, bob_id)) is True
    assert [f[0] for f in watcher.failures] == [ACCESS_REVOKED]
    assert [f[0] for f in both.failures] == [ACCESS_REVOKED]
