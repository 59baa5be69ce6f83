"""Presence across servers on the real Redis: per user, join and leave once anywhere, and a
dead server's users reaped within the documented time."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest_twisted
from twisted.internet import reactor

from stomp_chat.app.presence import PresenceTracker
from stomp_chat.broker import Subscription
from stomp_chat.cluster.presence import ClusterPresence, users_of
from tests.test_cluster_relay import (  # noqa: F401  (cluster is a fixture)
    Cluster,
    Node,
    Recorder,
    cluster,
    eventually,
    outcome,
    subscribe,
)

ROOM = 5
TOPIC = f"/topic/chat/room/{ROOM}"


@dataclass
class Session:
    """What the tracker needs of a session: who it speaks for."""

    principal: str
    session_id: str = "s"


class Member:
    """A node with presence tracked cluster-wide, and a watcher of the room's events."""

    def __init__(self, node: Node, ttl: float) -> None:
        self.node = node
        self.shared = ClusterPresence(node.relay, reactor, ttl=ttl)
        self.tracker = PresenceTracker(node.broker, self.shared, clock=reactor)
        self.shared.startService()
        self.events = subscribe(node.broker, TOPIC + "/presence")

    def enter(self, user: str) -> tuple[Session, Subscription]:
        session = Session(user)
        subscription = Subscription(Recorder(), f"{user}-{id(session)}", TOPIC)
        self.node.broker.subscribe(subscription, user)
        self.tracker.subscribed(session, subscription, {})
        return session, subscription

    def leave(self, entered: tuple[Session, Subscription]) -> None:
        session, subscription = entered
        self.node.broker.unsubscribe(subscription)
        self.tracker.unsubscribed(session, subscription)

    def seen(self) -> list[tuple[str, str, list[tuple[str, int]]]]:
        out = []
        for message in self.events.messages:
            event = json.loads(message.body)
            out.append((event["type"], event["user"]["id"],
                        [(u["id"], u["sessions"]) for u in event["users"]]))
        return out


def test_users_of_orders_by_arrival_and_sums_sessions() -> None:
    """The room's hash becomes the users list, oldest arrival first, sessions summed over
    servers; unreadable fields are skipped."""
    flat = [b"bob", b'{"name":"Bob","since":20,"nodes":{"n1":1,"n2":2}}',
            b"al", b'{"name":"Al","since":10,"nodes":{"n1":1}}', b"bad", b"not json"]
    assert users_of(flat) == [{"id": "al", "name": "Al", "sessions": 1},
                              {"id": "bob", "name": "Bob", "sessions": 3}]


@pytest_twisted.ensureDeferred
async def test_a_user_joins_and_leaves_once_across_servers(
    cluster: Cluster,  # noqa: F811  (the fixture)
) -> None:
    """Tabs of one user on two servers: join on the first anywhere, leave on the last
    anywhere, every server's watchers see the same events, the list counts both servers."""
    a, b = Member(await cluster.node(), 5.0), Member(await cluster.node(), 5.0)
    await cluster.sync()
    try:
        on_a = a.enter("alice")
        await eventually(lambda: len(a.events.messages) == 1 and len(b.events.messages) == 1,
                         "the join on both servers")
        on_b = b.enter("alice")
        users = await outcome(a.tracker.room_users(ROOM), "the cluster's list")
        assert [(u["id"], u["sessions"]) for u in users] == [("alice", 2)]
        a.leave(on_a)
        await eventually(
            lambda: a.shared.counts == {} and b.shared.counts != {}, "A's count gone"
        )
        users = await outcome(b.tracker.room_users(ROOM), "the list after one tab left")
        assert [(u["id"], u["sessions"]) for u in users] == [("alice", 1)]
        b.leave(on_b)
        await eventually(lambda: len(a.events.messages) == 2 and len(b.events.messages) == 2,
                         "the leave on both servers")
        await cluster.sync()
        assert a.seen() == b.seen() == [("join", "alice", [("alice", 1)]),
                                        ("leave", "alice", [])]
    finally:
        a.shared.stopService()
        b.shared.stopService()


@pytest_twisted.ensureDeferred
async def test_a_killed_servers_users_leave_within_four_thirds_of_the_ttl(
    cluster: Cluster,  # noqa: F811  (the fixture)
) -> None:
    """A server that stops refreshing its key (killed) is reaped by another: its users
    leave, announced there, within 4/3 of the ttl (plus the poll's slack)."""
    ttl = 0.6
    a, b = Member(await cluster.node(), ttl), Member(await cluster.node(), ttl)
    await cluster.sync()
    try:
        b.enter("bob")
        a.enter("carol")
        await eventually(lambda: len(a.events.messages) == 2, "both joins on A")
        killed_at = reactor.seconds()
        b.shared.stopService()  # no more beats: as if the process died
        b.node.relay.disconnect_now()
        await eventually(lambda: len(a.events.messages) == 3, "bob's leave on A", 3.0)
        waited = reactor.seconds() - killed_at
        assert waited <= ttl * 4 / 3 + 0.3, f"reaped after {waited:.2f}s"
        kind, user, users = a.seen()[-1]
        assert (kind, user, users) == ("leave", "bob", [("carol", 1)])
    finally:
        a.shared.stopService()
        b.shared.stopService()
