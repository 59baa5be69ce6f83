"""Gap-free recovery on re-subscribe (``since-seq``), through real sessions.

Sessions, broker, chat service and write-behind writer are the real ones on a
``task.Clock``; the store is the in-memory one, with history reads that can be
held back to open the seam between "recovering" and "live" as wide as a slow
database would.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from stomp_chat.app.chat import ChatRequest, ChatService
from stomp_chat.app.recovery import RoomRecovery
from stomp_chat.app.routes import AppRouter
from stomp_chat.broker import Broker
from stomp_chat.identity import Principal
from stomp_chat.persistence import ChatMessage, MemoryChatStore, WriteBehindWriter
from stomp_chat.stomp.frame import Frame
from tests.stompfakes import Client, make_context

FLUSH = 1.0


class SlowHistoryStore(MemoryChatStore):
    """The in-memory store whose history reads can be held until ``release()``."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = False
        self.failing: Exception | None = None
        self._held: list[tuple[Deferred[Any], Deferred[Any]]] = []
        self.reads = 0

    def load_messages(self, *args: Any, **kwargs: Any) -> Deferred[list[ChatMessage]]:
        self.reads += 1
        if self.failing is not None:
            return fail(self.failing)
        answer = super().load_messages(*args, **kwargs)
        if not self.holding:
            return answer
        held: Deferred[list[ChatMessage]] = Deferred()
        self._held.append((held, answer))
        return held

    def release(self) -> None:
        self.holding = False
        while self._held:
            held, answer = self._held.pop(0)
            answer.chainDeferred(held)


class Server:
    """One chat server in memory: sessions with the recovery listener."""

    def __init__(self, *, history_size: int = 30, max_recovery: int = 1000) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.store = SlowHistoryStore()
        self.writer = WriteBehindWriter(self.store, self.clock, flush_interval=FLUSH)
        self.writer.startService()
        self.broker = Broker()
        self.router = AppRouter()
        self.chat = ChatService(self.store, self.writer, self.broker, self.clock,
                                history_size=history_size)
        self.chat.register(self.router)
        self.recovery = RoomRecovery(self.chat, self.broker, max_recovery=max_recovery)
        self.context = make_context(clock=self.clock, broker=self.broker, router=self.router)
        self.context.subscription_listeners.append(self.recovery)

    def client(self) -> Client:
        client = Client(self.context)
        client.connect()
        return client

    def post(self, room_id: int, count: int, text: str = "m") -> None:
        for i in range(count):
            self.chat.post(ChatRequest("TALK", room_id, 7, f"{text}{i}"))

    def save(self) -> None:
        """Let the write-behind store everything accepted so far."""
        self.clock.advance(FLUSH)


def subscribe(client: Client, room_id: int, since: int | str | None, sub_id: str = "s1") -> None:
    headers = {"id": sub_id, "destination": f"/topic/chat/room/{room_id}"}
    if since is not None:
        headers["since-seq"] = str(since)
    client.send("SUBSCRIBE", headers)


def messages(client: Client) -> list[Frame]:
    return [f for f in client.frames() if f.command == "MESSAGE"]


def seqs(frames: list[Frame]) -> list[int]:
    return [json.loads(f.body)["seq"] for f in frames]


def test_missed_messages_come_from_the_cache_then_live_ones() -> None:
    """With the range in the room's cache, the missed messages arrive at once, then live ones."""
    server = Server()
    server.post(1, 5)
    client = server.client()
    server.store.reads = 0
    subscribe(client, 1, 2)
    recovered = messages(client)
    assert seqs(recovered) == [3, 4, 5]
    assert recovered[0].headers["recovery"] == "complete"
    assert all(f.headers["recovered"] == "true" for f in recovered)
    assert "recovery" not in recovered[1].headers
    assert server.store.reads == 0  # the cache covered it
    server.post(1, 1)
    live = messages(client)
    assert seqs(live) == [6]
    assert "recovered" not in live[0].headers and "recovery" not in live[0].headers


def test_replayed_messages_are_the_broadcast_bytes() -> None:
    """A replayed message has the same JSON as the live broadcast of it."""
    server = Server()
    watcher = server.client()
    subscribe(watcher, 1, None)
    server.post(1, 2, "안녕하세요 👋 ")
    live = messages(watcher)
    client = server.client()
    subscribe(client, 1, 0)
    assert [f.body for f in messages(client)] == [f.body for f in live]


def test_missed_messages_come_from_the_database_beyond_the_cache() -> None:
    """Missed messages older than the cache are read from the database, merged in order."""
    server = Server(history_size=5)
    server.post(1, 20)
    server.save()
    server.post(1, 3)  # 21-23 are still waiting for the write-behind
    client = server.client()
    server.store.reads = 0
    subscribe(client, 1, 3)
    assert seqs(messages(client)) == list(range(4, 24))
    assert server.store.reads == 1


def test_no_gap_or_duplicate_while_the_room_is_busy_during_recovery() -> None:
    """Messages published while the database answers are held, then follow the replay once."""
    server = Server(history_size=5)
    server.post(1, 20)
    server.save()
    client = server.client()
    server.store.holding = True
    subscribe(client, 1, 10)
    assert messages(client) == []
    server.post(1, 4)  # 21-24: live while recovering, and in the cache the reply merges
    server.store.release()
    server.post(1, 2)
    got = messages(client)
    assert seqs(got) == list(range(11, 27))
    assert got[0].headers["recovery"] == "complete"


@settings(max_examples=60, deadline=None)
@given(
    before=st.integers(0, 40),
    since_fraction=st.floats(0, 1),
    during=st.integers(0, 12),
    saved=st.booleans(),
    cache=st.integers(1, 10),
)
def test_recovery_seam_is_exact_for_any_timing(
    before: int, since_fraction: float, during: int, saved: bool, cache: int
) -> None:
    """For any backlog, cache size, saving and traffic while reading: each seq once, in order."""
    server = Server(history_size=cache)
    server.post(1, before)
    if saved:
        server.save()
    since = int(before * since_fraction)
    client = server.client()
    server.store.holding = True
    subscribe(client, 1, since)
    server.post(1, during)
    server.store.release()
    server.post(1, 2)
    assert seqs(messages(client)) == list(range(since + 1, before + during + 3))


def test_a_range_too_old_gives_the_newest_messages_and_says_so() -> None:
    """More missed messages than the limit: the newest ones come, marked too-old."""
    server = Server(history_size=5, max_recovery=10)
    server.post(1, 30)
    server.save()
    client = server.client()
    subscribe(client, 1, 2)
    got = messages(client)
    assert seqs(got) == list(range(21, 31))
    assert got[0].headers["recovery"] == "too-old"


def test_exactly_the_limit_is_still_complete() -> None:
    """Missing exactly max-recovery messages recovers them all."""
    server = Server(history_size=5, max_recovery=10)
    server.post(1, 12)
    client = server.client()
    subscribe(client, 1, 2)
    got = messages(client)
    assert seqs(got) == list(range(3, 13))
    assert got[0].headers["recovery"] == "complete"


def test_too_many_live_messages_while_recovering_is_too_old() -> None:
    """More live messages than the limit while the database answers: the newest, too-old."""
    server = Server(history_size=2, max_recovery=4)
    server.post(1, 3)
    server.save()
    client = server.client()
    server.store.holding = True
    subscribe(client, 1, 0)
    server.post(1, 9)  # 4-12; only 9-12 can be held
    server.store.release()
    got = messages(client)
    assert seqs(got) == [9, 10, 11, 12]
    assert got[0].headers["recovery"] == "too-old"


def test_a_failed_read_hands_over_live_messages_and_reports_it() -> None:
    """When the database cannot be read, live messages still flow, marked failed, with an error."""
    server = Server(history_size=2)
    server.post(1, 10)
    server.save()
    client = server.client()
    client.send("SUBSCRIBE", {"id": "errors", "destination": "/user/queue/errors"})
    server.store.holding = True
    subscribe(client, 1, 1)
    server.post(1, 1)
    server.store.failing = RuntimeError("database down")
    held = server.store._held.pop()[0]
    held.errback(RuntimeError("database down"))
    got = messages(client)
    errors = [f for f in got if f.headers["destination"] == "/user/queue/errors"]
    room = [f for f in got if f.headers["destination"] == "/topic/chat/room/1"]
    assert json.loads(errors[0].body)["error"] == "recovery-failed"
    assert seqs(room) == [11]
    assert room[0].headers["recovery"] == "failed"


def test_an_unsubscribe_during_recovery_delivers_nothing() -> None:
    """A subscription that ends while its range loads receives nothing afterwards."""
    server = Server(history_size=2)
    server.post(1, 10)
    server.save()
    client = server.client()
    server.store.holding = True
    subscribe(client, 1, 1)
    client.send("UNSUBSCRIBE", {"id": "s1"})
    server.post(1, 1)
    server.store.release()
    assert messages(client) == []
    assert not client.closed


def test_a_subscribe_without_since_seq_is_untouched() -> None:
    """A plain SUBSCRIBE gets live messages only, without recovery headers."""
    server = Server()
    server.post(1, 3)
    client = server.client()
    subscribe(client, 1, None)
    assert messages(client) == []
    server.post(1, 1)
    got = messages(client)
    assert seqs(got) == [4] and "recovery" not in got[0].headers


def test_an_empty_room_recovers_nothing_and_stays_live() -> None:
    """since-seq on a room with nothing newer sends nothing until the next message."""
    server = Server()
    client = server.client()
    subscribe(client, 9, 0)
    assert messages(client) == []
    server.post(9, 1)
    got = messages(client)
    assert seqs(got) == [1] and got[0].headers["recovery"] == "complete"


def test_an_invalid_since_seq_is_an_error() -> None:
    """since-seq that is not a whole number >= 0 is answered with ERROR and a close."""
    for bad in ("-1", "x", "1.5", "99999999999999999999", "١"):
        server = Server()
        client = server.client()
        subscribe(client, 1, bad)
        error = client.frames()[-1]
        assert error.command == "ERROR" and error.headers["message"] == "invalid since-seq"
        assert client.closed


def test_since_seq_outside_a_room_is_an_error() -> None:
    """since-seq on a destination other than a room topic is refused with ERROR."""
    server = Server()
    client = server.client()
    client.send("SUBSCRIBE", {"id": "s", "destination": "/topic/other", "since-seq": "1"})
    error = client.frames()[-1]
    assert error.command == "ERROR"
    assert "not a room" in error.headers["message"]


def test_recovery_reads_the_real_database_after_a_restart(start_server, clients) -> None:
    """After a restart (empty cache), since-seq replays from SQLite, then live messages follow."""
    server = start_server()
    sender = clients(server)
    for i in range(1, 13):
        sender.send_chat({"type": "TALK", "roomId": 5, "senderId": 7, "detailMessage": f"n{i}"},
                         receipt=f"r{i}")
    sender.wait_for(lambda: "r12" in sender.receipts, "every message stored")
    sender.close()
    server.stop()
    server.start()
    client = clients(server)
    client.conn.subscribe("/topic/chat/room/5", id="room", ack="auto",
                          headers={"since-seq": "5"})
    recovered = client.wait_chat(5, 7)
    assert [m["seq"] for m in recovered] == list(range(6, 13))
    frames = client.at("/topic/chat/room/5")
    assert frames[0].headers["recovery"] == "complete"
    assert all(f.headers["recovered"] == "true" for f in frames)
    client.send_chat({"type": "TALK", "roomId": 5, "senderId": 7, "detailMessage": "live"})
    assert [m["seq"] for m in client.wait_chat(5, 8)][-1] == 13


def test_max_recovery_option_bounds_the_replay(start_server, clients) -> None:
    """With --max-recovery 3, a client far behind gets the 3 newest messages, marked too-old."""
    server = start_server("--max-recovery", "3")
    sender = clients(server)
    for i in range(1, 11):
        sender.send_chat({"type": "TALK", "roomId": 6, "senderId": 7, "detailMessage": f"n{i}"},
                         receipt=f"r{i}")
    sender.wait_for(lambda: "r10" in sender.receipts, "every message stored")
    client = clients(server)
    client.conn.subscribe("/topic/chat/room/6", id="room", ack="auto", headers={"since-seq": "1"})
    assert [m["seq"] for m in client.wait_chat(6, 3)] == [8, 9, 10]
    assert client.at("/topic/chat/room/6")[0].headers["recovery"] == "too-old"


def test_no_gap_or_duplicate_at_the_seam_on_a_real_busy_server(start_server, clients) -> None:
    """While another client publishes non-stop, a since-seq subscriber sees every seq once."""
    server = start_server("--history-size", "10")
    publisher = clients(server)
    total = 400
    started = threading.Event()

    def publish() -> None:
        for i in range(1, total + 1):
            publisher.send_chat({"type": "TALK", "roomId": 8, "senderId": 7,
                                 "detailMessage": f"busy {i}"},
                                receipt="last" if i == total else None)
            if i == 60:
                started.set()
            time.sleep(0.002)  # a busy room, not one burst: the SUBSCRIBE lands mid-stream

    thread = threading.Thread(target=publish)
    thread.start()
    started.wait(10)
    client = clients(server)
    client.conn.subscribe("/topic/chat/room/8", id="room", ack="auto", headers={"since-seq": "20"})
    thread.join(30)
    got = [m["seq"] for m in client.wait_chat(8, total - 20, timeout=20)]
    assert got == list(range(21, total + 1))
    frames = client.at("/topic/chat/room/8")
    replayed = sum(1 for f in frames if "recovered" in f.headers)
    assert 0 < replayed < len(frames)  # both sides of the seam were crossed


def test_a_subscription_in_recovery_still_shows_its_session() -> None:
    """While its range loads, the subscription's subscriber answers as the session does, so
    closing a revoked member's sessions finds it too."""
    from stomp_chat.authz.revoke import SubscriptionRevoker

    server = Server(history_size=2)
    server.post(1, 10)
    server.save()
    server.store.create_member("alice")
    client = Client(server.context)
    client.connect()
    client.session.principal = Principal("alice", "alice")
    server.store.holding = True
    subscribe(client, 1, 1)
    (subscription,) = server.broker.topic_subscriptions("/topic/chat/room/1")
    assert subscription.subscriber is not client.session  # held back while recovering
    assert subscription.subscriber.principal is client.session.principal
    member = server.store.get_member_by_name("alice").result
    closed = SubscriptionRevoker(server.broker, server.store).member_left(1, member.id).result
    assert closed == 1 and client.closed
    server.store.release()
    assert messages(client) == []
