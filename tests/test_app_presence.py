"""Presence per room, counted per user, through real sessions on a ``task.Clock``."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock

from stomp_chat.app.presence import PRESENCE_WINDOW, PresenceTracker
from stomp_chat.app.routes import AppRouter
from stomp_chat.broker import Broker
from stomp_chat.identity import Principal
from stomp_chat.stomp.frame import Frame
from tests.stompfakes import Client, make_context


class LoginNames:
    """Names each client after its CONNECT ``login`` (anonymous without one)."""

    def authenticate(self, frame: Frame, connection: Any) -> Principal | None:
        login = frame.headers.get("login")
        return Principal(login, login) if login else None


class Server:
    def __init__(self) -> None:
        self.clock = Clock()
        self.broker = Broker()
        self.presence = PresenceTracker(self.broker, clock=self.clock)
        self.context = make_context(clock=self.clock, broker=self.broker, router=AppRouter(),
                                    authenticator=LoginNames())
        self.context.subscription_listeners.append(self.presence)
        self.context.heartbeats.startService()

    def window_passes(self) -> None:
        """Let the room's presence window close, so a trailing event goes out."""
        self.clock.advance(PRESENCE_WINDOW)

    def pass_time(self, seconds: int) -> None:
        for _ in range(seconds):
            self.clock.advance(1)

    def client(self, login: str | None, heartbeat: str = "0,0") -> Client:
        client = Client(self.context)
        headers = {"login": login} if login is not None else {}
        client.connect(heartbeat=heartbeat, **headers)
        return client


def enter(client: Client, room_id: int, sub_id: str = "room") -> None:
    client.send("SUBSCRIBE", {"id": sub_id, "destination": f"/topic/chat/room/{room_id}"})


def watch(client: Client, room_id: int) -> None:
    client.send("SUBSCRIBE", {"id": "presence", "destination":
                              f"/topic/chat/room/{room_id}/presence"})


def events(client: Client) -> list[dict[str, Any]]:
    return [json.loads(f.body) for f in client.frames() if f.command == "MESSAGE"]


def names(server: Server, room_id: int) -> list[str]:
    return [user["name"] for user in server.presence.users(room_id)]


def test_first_session_joins_and_last_leaves() -> None:
    """A user's first subscription announces a join, and only their last one's end a leave."""
    server = Server()
    observer = server.client("observer")
    watch(observer, 1)
    tab1, tab2 = server.client("alice"), server.client("alice")
    enter(tab1, 1)
    enter(tab2, 1)
    joined = events(observer)
    assert [(e["type"], e["user"]["name"]) for e in joined] == [("join", "alice")]
    assert joined[0]["users"] == [{"id": "alice", "name": "alice", "sessions": 1}]
    assert server.presence.users(1) == [{"id": "alice", "name": "alice", "sessions": 2}]
    tab1.send("UNSUBSCRIBE", {"id": "room"})
    assert events(observer) == []
    tab2.send("DISCONNECT", {})
    server.window_passes()  # the leave came within the join's window: it trails it
    left = events(observer)
    assert [(e["type"], e["user"]["name"], e["users"]) for e in left] == [("leave", "alice", [])]
    assert server.presence.users(1) == []


def test_each_user_is_listed_once_in_order_of_arrival() -> None:
    """Several users in a room are listed once each, by arrival; other rooms are separate."""
    server = Server()
    for name in ("bob", "alice", "bob"):
        enter(server.client(name), 1)
    enter(server.client("carol"), 2)
    assert names(server, 1) == ["bob", "alice"]
    assert names(server, 2) == ["carol"]
    assert server.presence.rooms_of("bob") == [1]


def test_a_dropped_connection_leaves() -> None:
    """A connection that is lost without DISCONNECT leaves the room like any other."""
    server = Server()
    observer = server.client("observer")
    watch(observer, 1)
    alice = server.client("alice")
    enter(alice, 1)
    alice.session.connection_lost()
    server.window_passes()
    kinds = [e["type"] for e in events(observer)]
    assert kinds == ["join", "leave"]
    assert names(server, 1) == []


def test_a_heartbeat_timeout_leaves_while_the_other_tab_stays() -> None:
    """A tab dropped for missing heart-beats leaves only when it was the user's last one."""
    server = Server()
    observer = server.client("observer")
    watch(observer, 1)
    silent = server.client("alice", heartbeat="1000,0")  # promises heart-beats, sends none
    lively = server.client("alice", heartbeat="0,0")
    enter(silent, 1)
    enter(lively, 1)
    events(observer)
    server.pass_time(30)  # 10 s negotiated, with the grace: dropped within 17 s
    assert silent.closed
    assert events(observer) == []  # alice is still there in her other tab
    assert server.presence.users(1) == [{"id": "alice", "name": "alice", "sessions": 1}]
    lonely = server.client("bob", heartbeat="1000,0")
    enter(lonely, 1)
    server.pass_time(30)
    assert lonely.closed
    assert [(e["type"], e["user"]["name"]) for e in events(observer)] == [
        ("join", "bob"), ("leave", "bob"),
    ]


def test_anonymous_sessions_are_people_of_their_own() -> None:
    """Without a name, each session counts as a separate guest."""
    server = Server()
    enter(server.client(None), 1)
    enter(server.client(None), 1)
    listed = names(server, 1)
    assert len(listed) == 2 and all(name.startswith("guest-") for name in listed)


def test_only_room_topics_count() -> None:
    """Subscribing to a room's presence topic or other destinations is not being in the room."""
    server = Server()
    alice = server.client("alice")
    watch(alice, 1)
    alice.send("SUBSCRIBE", {"id": "x", "destination": "/topic/chat/room/1/extra"})
    alice.send("SUBSCRIBE", {"id": "y", "destination": "/topic/chat/room/0"})
    assert server.presence.users(1) == [] and server.presence.users(0) == []


# -- coalescing: at most one event per room per window --------------------------------


def test_the_first_change_goes_out_at_once_and_later_ones_trail_with_the_latest_list() -> None:
    """A room's first change is announced at once; the next ones within the window become one
    event, naming the latest change and listing everyone; then the room is quiet again."""
    server = Server()
    observer = server.client("observer")
    watch(observer, 1)
    enter(server.client("alice"), 1)
    assert [e["user"]["name"] for e in events(observer)] == ["alice"]
    server.clock.advance(PRESENCE_WINDOW / 3)
    enter(server.client("bob"), 1)
    enter(server.client("carol"), 1)
    assert events(observer) == []
    server.window_passes()
    [trailing] = events(observer)
    assert (trailing["type"], trailing["user"]["name"]) == ("join", "carol")
    assert [u["name"] for u in trailing["users"]] == ["alice", "bob", "carol"]
    server.window_passes()
    assert events(observer) == []
    enter(server.client("dave"), 1)  # a window after the last event: at once again
    assert [e["user"]["name"] for e in events(observer)] == ["dave"]


def test_a_join_and_leave_within_the_window_announce_nothing() -> None:
    """A user who arrives and leaves within one window leaves the room as it was: no event;
    another room's events are not held by this room's window."""
    server = Server()
    observer = server.client("observer")
    watch(observer, 1)
    enter(server.client("alice"), 1)
    events(observer)
    bob = server.client("bob")
    enter(bob, 1)
    bob.send("UNSUBSCRIBE", {"id": "room"})
    server.window_passes()
    assert events(observer) == []
    other = server.client("observer2")
    watch(other, 2)
    enter(server.client("carol"), 2)
    assert [e["user"]["name"] for e in events(other)] == ["carol"]


def test_a_client_toggling_its_subscription_costs_watchers_one_list_per_window() -> None:
    """4,000 SUBSCRIBE/UNSUBSCRIBE frames over 4 s in a room of 150 users reach each
    watcher as at most one event per window (the limit this replaces: one per frame)."""
    server = Server()
    observer = server.client("observer")
    watch(observer, 1)
    for number in range(150):
        enter(server.client(f"user-{number:03d}"), 1)
    server.window_passes()
    events(observer)
    toggler = server.client("toggler")
    seconds = 4.0
    frames = 4000
    for _ in range(frames // 2):
        enter(toggler, 1)
        toggler.send("UNSUBSCRIBE", {"id": "room"})
        server.clock.advance(seconds / (frames // 2))
    server.window_passes()
    received = [f for f in observer.frames() if f.command == "MESSAGE"]
    assert len(received) <= seconds / PRESENCE_WINDOW + 1
    pushed = sum(len(f.body) for f in received)
    assert pushed < 17 * 8_000, pushed  # each list of 151 users is about 7.5 KB
    last = json.loads(received[-1].body)
    assert "toggler" not in [u["name"] for u in last["users"]]  # the room as it ended
