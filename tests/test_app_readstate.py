"""Read positions and unread counts, through real sessions, chat service and broker.

Time is a ``task.Clock``; positions live in the in-memory store (its contract
is checked against SQLite and PostgreSQL in test_persistence_readpositions).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from stomp_chat.app.chat import ChatRequest, ChatService
from stomp_chat.app.readstate import FULL_PUSH_WINDOW, ReadState
from stomp_chat.app.routes import AppRouter
from stomp_chat.broker import Broker
from stomp_chat.identity import Principal
from stomp_chat.persistence import MemoryChatStore, WriteBehindWriter
from stomp_chat.persistence.readpositions import AdbapiReadPositionStore, MemoryReadPositionStore
from stomp_chat.stomp.frame import Frame
from tests.silentdb import SilentPool
from tests.stompfakes import Client, make_context


class LoginNames:
    """Names each client after its CONNECT ``login``."""

    def authenticate(self, frame: Frame, connection: Any) -> Principal | None:
        login = frame.headers.get("login")
        return Principal(login, login) if login else None


class Server:
    def __init__(self, may_read: Any = None) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = MemoryChatStore()
        self.writer = WriteBehindWriter(self.store, self.clock, flush_interval=1.0)
        self.writer.startService()
        self.broker = Broker()
        self.router = AppRouter()
        self.chat = ChatService(self.store, self.writer, self.broker, self.clock)
        self.chat.register(self.router)
        self.positions = MemoryReadPositionStore(
            lambda room: self.store.get_room(room).result is not None  # answers at once
        )
        self.reads = ReadState(self.positions, self.chat, self.broker, self.clock,
                               may_read=may_read)
        self.reads.register(self.router)
        self.context = make_context(clock=self.clock, broker=self.broker, router=self.router,
                                    authenticator=LoginNames())
        self.context.subscription_listeners.append(self.reads)

    def client(self, login: str) -> Client:
        client = Client(self.context)
        client.connect(login=login)
        client.send("SUBSCRIBE", {"id": "errors", "destination": "/user/queue/errors"})
        return client

    def post(self, room_id: int, count: int) -> None:
        for i in range(count):
            self.chat.post(ChatRequest("TALK", room_id, 7, f"m{i}"))
        self.clock.advance(0)  # the turn ends: counts go out


def online(client: Client) -> None:
    client.send("SUBSCRIBE", {"id": "unread", "destination": "/user/queue/unread"})


def read(client: Client, room_id: Any, seq: Any, **extra: Any) -> None:
    body = json.dumps({"roomId": room_id, "seq": seq, **extra}).encode()
    client.send("SEND", {"destination": "/app/read", "content-type": "application/json"}, body)


def updates(client: Client) -> list[tuple[int, int]]:
    """(roomId, unread) of every unread update the client received since the last call."""
    frames = [f for f in client.frames() if f.command == "MESSAGE"]
    return [
        (body["roomId"], body["unread"])
        for f in frames
        if f.headers["destination"] == "/user/queue/unread"
        for body in [json.loads(f.body)]
    ]


def errors(client: Client) -> list[str]:
    return [
        json.loads(f.body)["error"]
        for f in client.frames()
        if f.command == "MESSAGE" and f.headers["destination"] == "/user/queue/errors"
    ]


def test_counts_move_in_every_tab_of_the_user() -> None:
    """A read in one tab and new messages update the unread count in both tabs of one user."""
    server = Server()
    server.post(1, 5)
    tab1, tab2 = server.client("alice"), server.client("alice")
    online(tab1)
    online(tab2)
    read(tab1, 1, 3)
    assert updates(tab1) == [(1, 2)]
    assert updates(tab2) == [(1, 2)]
    server.post(1, 1)
    assert updates(tab1) == updates(tab2) == [(1, 3)]
    read(tab2, 1, 6)
    assert updates(tab1) == updates(tab2) == [(1, 0)]


def test_a_burst_of_messages_is_one_update() -> None:
    """Many messages in one reactor turn cost one update per user and room."""
    server = Server()
    server.post(1, 1)
    alice = server.client("alice")
    online(alice)
    read(alice, 1, 1)
    updates(alice)
    server.post(1, 25)
    assert updates(alice) == [(1, 25)]


def test_one_reader_whose_count_cannot_be_pushed_costs_the_others_nothing() -> None:
    """A user id no /user/ destination can name ("a/b", possible with --auth none) makes
    that reader's push fail; the other readers of the room still get their counts."""
    server = Server()
    server.post(1, 2)
    broken, alice = server.client("a/b"), server.client("alice")
    for client in (broken, alice):
        online(client)
        read(client, 1, 1)
    updates(alice)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        server.post(1, 3)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert updates(alice) == [(1, 4)]
    assert [e for e in events if "log_failure" in e]


def test_other_users_counts_are_their_own() -> None:
    """One user's reads and counts never reach another user."""
    server = Server()
    server.post(1, 4)
    alice, bob = server.client("alice"), server.client("bob")
    online(alice)
    online(bob)
    read(alice, 1, 4)
    read(bob, 1, 1)
    assert updates(alice) == [(1, 0)]
    assert updates(bob) == [(1, 3)]
    server.post(1, 1)
    assert updates(alice) == [(1, 1)]
    assert updates(bob) == [(1, 4)]


def test_a_new_tab_gets_every_count_from_stored_positions() -> None:
    """Coming online loads the user's stored positions and sends the count of each room."""
    server = Server()
    server.post(1, 4)
    server.post(2, 9)
    first = server.client("alice")
    read(first, 1, 4)
    read(first, 2, 2)
    first.send("DISCONNECT", {})
    server.post(1, 2)
    later = server.client("alice")
    online(later)
    assert sorted(updates(later)) == [(1, 2), (2, 7)]
    second = server.client("alice")
    online(second)
    assert updates(second) == []  # the first tab's counts went out less than a window ago
    server.clock.advance(FULL_PUSH_WINDOW)
    assert sorted(updates(second)) == [(1, 2), (2, 7)]


def test_positions_only_move_forward_and_stop_at_the_last_message() -> None:
    """An older seq does not move a position back; one past the end counts as the end."""
    server = Server()
    server.post(1, 5)
    alice = server.client("alice")
    online(alice)
    read(alice, 1, 4)
    read(alice, 1, 2)
    assert updates(alice) == [(1, 1)]
    read(alice, 1, 1_000_000)
    assert updates(alice) == [(1, 0)]
    server.post(1, 1)
    assert updates(alice) == [(1, 1)]  # the position was 5, not a million
    assert server.positions.positions("alice").result == {1: 5}


def test_offline_users_get_nothing_pushed() -> None:
    """A user with no /user/queue/unread subscription still stores reads but gets no updates."""
    server = Server()
    server.post(1, 2)
    alice = server.client("alice")
    read(alice, 1, 1)
    server.post(1, 3)
    assert updates(alice) == []
    assert server.positions.positions("alice").result == {1: 1}


def test_messages_schedule_nothing_once_the_last_reader_goes_offline() -> None:
    """After the only online reader unsubscribes, new messages schedule no count update."""
    server = Server()
    server.post(1, 1)
    alice = server.client("alice")
    online(alice)
    read(alice, 1, 1)
    alice.send("UNSUBSCRIBE", {"id": "unread"})
    server.clock.advance(0)
    for i in range(3):
        server.chat.post(ChatRequest("TALK", 1, 7, f"late {i}"))
    assert not any(call.func == server.reads._flush for call in server.clock.getDelayedCalls())
    assert server.reads._readers == {}


def test_bad_read_reports_are_application_errors() -> None:
    """Malformed bodies and unknown rooms are reported on /user/queue/errors; the session stays."""
    server = Server()
    server.post(1, 1)
    alice = server.client("alice")
    online(alice)
    alice.send("SEND", {"destination": "/app/read"}, b"{not json")
    read(alice, "one", 1)
    read(alice, 1, -1)
    read(alice, True, 1)
    read(alice, 1, 2.5)
    read(alice, 404, 1)
    assert errors(alice) == ["invalid-json", "invalid-read", "invalid-read", "invalid-read",
                             "invalid-read", "unknown-room"]
    assert not alice.closed


def test_the_receipt_of_a_read_follows_its_storage() -> None:
    """A read SEND with a receipt is receipted once stored, and not when refused."""
    server = Server()
    server.post(1, 1)
    alice = server.client("alice")
    body = json.dumps({"roomId": 1, "seq": 1}).encode()
    alice.send("SEND", {"destination": "/app/read", "receipt": "ok"}, body)
    alice.send("SEND", {"destination": "/app/read", "receipt": "no"}, b"[]")
    frames = alice.frames()
    assert [f.headers.get("receipt-id") for f in frames if f.command == "RECEIPT"] == ["ok"]


def test_unread_counts_on_a_real_server(server, clients) -> None:
    """Through twistd and SQLite: a read report is stored and counts follow new messages."""
    client = clients(server)
    client.subscribe("/user/queue/unread")
    for i in range(3):
        client.send_chat({"type": "TALK", "roomId": 3, "senderId": 7, "detailMessage": f"{i}"},
                         receipt=f"m{i}")
    client.wait_for(lambda: "m2" in client.receipts, "the messages")
    client.conn.send("/app/read", json.dumps({"roomId": 3, "seq": 1}),
                     content_type="application/json", headers={"receipt": "read"})
    client.wait_for(lambda: "read" in client.receipts, "the read receipt")
    first = client.wait_at("/user/queue/unread", 1)
    assert json.loads(first[0].body) == {"roomId": 3, "unread": 2, "lastReadSeq": 1, "lastSeq": 3}
    client.send_chat({"type": "TALK", "roomId": 3, "senderId": 7, "detailMessage": "more"})
    second = client.wait_at("/user/queue/unread", 2)
    assert json.loads(second[1].body)["unread"] == 3


def test_messages_relayed_from_another_server_move_counts() -> None:
    """In cluster mode a message numbered elsewhere (after the chat cached it) updates counts."""
    server = Server()
    server.post(1, 2)
    alice = server.client("alice")
    online(alice)
    read(alice, 1, 2)
    assert updates(alice) == [(1, 0)]
    server.chat.active_room(1).last_seq = 5  # what ChatService.relayed leaves behind
    server.reads.relayed("/topic/chat/room/1", "other-node", b"{}")
    server.reads.relayed("/topic/other", "other-node", b"{}")
    server.clock.advance(0)
    assert updates(alice) == [(1, 3)]


def test_reads_in_rooms_the_user_may_not_read_are_refused() -> None:
    """Under room rules, a read report for a room the user may not read is an error, unstored."""
    asked: list[tuple[str, int]] = []

    def may_read(principal: Principal, room_id: int) -> Deferred[bool]:
        asked.append((principal.user_id, room_id))
        return succeed(room_id != 2)

    server = Server(may_read=may_read)
    server.post(1, 3)
    server.post(2, 3)
    alice = server.client("alice")
    online(alice)
    read(alice, 2, 3)
    read(alice, 1, 1)
    frames = [f for f in alice.frames() if f.command == "MESSAGE"]
    assert [json.loads(f.body).get("error") for f in frames] == ["forbidden", None]
    assert server.positions.positions("alice").result == {1: 1}
    assert asked == [("alice", 2), ("alice", 1)]


def test_a_room_the_user_may_no_longer_read_gets_no_more_counts() -> None:
    """Once a user may not read a room (they left a private room), its unread counts stop, in
    the open tab and in a tab that comes online later: they would tell how busy it is."""
    readable = {1, 2}

    def may_read(principal: Principal, room_id: int) -> Deferred[bool]:
        return succeed(room_id in readable)

    server = Server(may_read=may_read)
    server.post(1, 2)
    server.post(2, 2)
    alice = server.client("alice")
    online(alice)
    read(alice, 1, 1)
    read(alice, 2, 1)
    assert sorted(updates(alice)) == [(1, 1), (2, 1)]
    readable.discard(2)
    server.post(2, 3)
    server.post(1, 1)
    assert updates(alice) == [(1, 2)]
    later = server.client("alice")
    online(later)
    server.clock.advance(FULL_PUSH_WINDOW)  # alice's counts went out less than a window ago
    assert updates(later) == [(1, 2)]


def test_repeated_unread_subscriptions_send_every_count_at_most_once_per_window() -> None:
    """A user with positions in many rooms repeating SUBSCRIBE /user/queue/unread: another
    subscription of the same session gets nothing more, other sessions' ones within a window
    share one trailing push, and toggling SUBSCRIBE/UNSUBSCRIBE is rationed the same way."""
    server = Server()
    rooms = range(1, 201)
    for room in rooms:
        server.post(room, 1)
    alice = server.client("alice")
    for room in rooms:
        read(alice, room, 0)
    online(alice)
    updates(alice)
    for number in range(40):
        alice.send("SUBSCRIBE", {"id": f"again-{number}", "destination": "/user/queue/unread"})
    server.clock.advance(FULL_PUSH_WINDOW)
    assert updates(alice) == []  # (it used to be 40 x 200 counts)
    for number in range(40):
        alice.send("UNSUBSCRIBE", {"id": f"again-{number}"})
    tabs = [server.client("alice") for _ in range(10)]
    for tab in tabs:
        online(tab)
        tab.send("UNSUBSCRIBE", {"id": "unread"})
        online(tab)
    server.clock.advance(FULL_PUSH_WINDOW)
    # The first new tab at once, the 19 SUBSCRIBEs after it in one trailing push.
    assert len(updates(alice)) == 2 * len(rooms)
    assert all(len(updates(tab)) <= 2 * len(rooms) for tab in tabs)
    server.clock.advance(FULL_PUSH_WINDOW)
    assert updates(alice) == []


def test_a_read_the_database_does_not_store_in_time_is_refused_unavailable() -> None:
    """With the position store's database silent, a read report is refused ``unavailable``
    once the database timeout passes (no RECEIPT, no hang), and the session stays."""
    server = Server()
    server.reads.store = AdbapiReadPositionStore(SilentPool(), timeout=3, clock=server.clock)
    server.post(1, 2)
    alice = server.client("alice")
    online(alice)  # loading the positions waits on the silent database too
    body = json.dumps({"roomId": 1, "seq": 1}).encode()
    alice.send("SEND", {"destination": "/app/read", "receipt": "r"}, body)
    server.clock.advance(2.9)
    assert errors(alice) == []
    server.clock.advance(0.1)
    frames = alice.frames()
    assert [f.command for f in frames].count("RECEIPT") == 0
    [refusal] = [json.loads(f.body) for f in frames if f.command == "MESSAGE"
                 and f.headers["destination"] == "/user/queue/errors"]
    assert refusal["error"] == "unavailable" and "try again" in refusal["message"]
    assert not alice.closed
