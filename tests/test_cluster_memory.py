"""The chat's cluster path on the in-memory relay: several nodes, one hub, a driven clock."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from stomp_chat.app.chat import ChatRequest, ChatService
from stomp_chat.app.routes import ApplicationError
from stomp_chat.broker import Broker, Message, Subscription
from stomp_chat.cluster import MemoryHub, MemoryRelay
from stomp_chat.cluster.batching import SEQUENCE_AND_PUBLISH
from stomp_chat.persistence import ChatMessage, MemoryChatStore, WriteBehindWriter


class Recorder:
    """A broker subscriber that keeps every delivery."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def deliver(self, subscription: Subscription, message: Message) -> None:
        self.messages.append(message)

    def fail(self, message: str, detail: str = "") -> None:
        raise AssertionError(f"failed: {message} {detail}")

    def seqs(self) -> list[int]:
        return [json.loads(m.body)["seq"] for m in self.messages]


def watch(broker: Broker, destination: str) -> Recorder:
    recorder = Recorder()
    broker.subscribe(Subscription(recorder, uuid.uuid4().hex, destination), "anon")
    return recorder


class Node:
    """A broker, a memory relay and a chat, on the hub's clock."""

    def __init__(self, hub: MemoryHub, store: MemoryChatStore | None = None) -> None:
        self.broker = Broker()
        self.relay = MemoryRelay(self.broker, hub)
        self.store = store if store is not None else MemoryChatStore()
        self.writer = WriteBehindWriter(self.store, hub.clock, flush_interval=0.01)
        self.chat = ChatService(self.store, self.writer, self.broker, hub.clock,
                                sequencer=self.relay)
        self.relay.listeners.append(self.chat.relayed)
        self.writer.startService()
        self.relay.startService()

    def talk(self, room_id: int, text: str) -> Deferred[ChatMessage]:
        return self.chat.post(ChatRequest("TALK", room_id, 1, text))


def settle(clock: Clock, turns: int = 10) -> None:
    """Run the turns the relays and the hub schedule (batches, deliveries)."""
    for _ in range(turns):
        clock.advance(0)
    clock.advance(0.05)  # the writers' flushes
    for _ in range(turns):
        clock.advance(0)


def result_of(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def test_chat_messages_on_two_nodes_share_one_gap_free_order() -> None:
    """Messages posted alternately on two nodes get seq 1..N in one order that every node's
    subscribers see once, each stored by the node that accepted it."""
    clock = Clock()
    hub = MemoryHub(clock)
    a, b = Node(hub), Node(hub)
    on_a, on_b = watch(a.broker, "/topic/chat/room/1"), watch(b.broker, "/topic/chat/room/1")
    posts = [(a, b)[i % 2].talk(1, f"m{i}") for i in range(6)]
    settle(clock)
    messages = [result_of(d) for d in posts]
    assert sorted(m.seq for m in messages) == [1, 2, 3, 4, 5, 6]
    assert on_a.seqs() == on_b.seqs() == [1, 2, 3, 4, 5, 6]
    stored_a = [m.seq for m in result_of(a.store.load_messages(1, 100))]
    stored_b = [m.seq for m in result_of(b.store.load_messages(1, 100))]
    assert sorted(stored_a + stored_b) == [1, 2, 3, 4, 5, 6]
    assert not set(stored_a) & set(stored_b), "each message is stored once, by its origin"
    for node in (a, b):
        state = node.chat.active_room(1)
        assert state is not None and state.last_seq == 6


def test_a_chat_message_is_refused_as_unavailable_while_the_hub_is_down() -> None:
    """With the hub down a chat post fails with ApplicationError 'unavailable' and
    nothing is broadcast or numbered."""
    clock = Clock()
    hub = MemoryHub(clock)
    node = Node(hub)
    watcher = watch(node.broker, "/topic/chat/room/2")
    settle(clock)
    hub.up = False
    posted = node.talk(2, "into the void")
    settle(clock)
    outcome = result_of(posted)
    assert isinstance(outcome, Failure) and isinstance(outcome.value, ApplicationError)
    assert outcome.value.code == "unavailable"
    assert watcher.messages == []
    assert hub.counters == {}


def test_a_lost_counter_restarts_past_the_durable_floor() -> None:
    """When the hub loses a room's counter the next message is numbered past the
    database's floor, never from one node's memory."""
    clock = Clock()
    hub = MemoryHub(clock)
    shared = MemoryChatStore()
    a, b = Node(hub, shared), Node(hub, shared)
    for i in range(3):
        a.talk(3, f"a{i}")
    settle(clock)
    hub.counters.clear()
    floor = result_of(shared.seq_floor(3))
    posted = b.talk(3, "after the loss")
    settle(clock)
    assert result_of(posted).seq == max(floor, 3) + 1


def test_the_chat_owns_the_placeholder_the_relay_fills() -> None:
    """The relay writes the seq wherever the caller's placeholder stands, whatever it is."""
    clock = Clock()
    hub = MemoryHub(clock)
    broker = Broker()
    relay = MemoryRelay(broker, hub)
    relay.startService()
    watcher = watch(broker, "/topic/t")
    d = relay.sequence_and_publish(4, "/topic/t", {}, b"seq=@@;again=@@", b"@@", 0, None)
    settle(clock)
    assert result_of(d) == 1
    assert [m.body for m in watcher.messages] == [b"seq=1;again=1"]
    with pytest.raises(ValueError, match="placeholder"):
        relay.sequence_and_publish(4, "/topic/t", {}, b"x", b"", 0, None)


def test_plain_topics_reach_other_nodes_once_and_never_echo() -> None:
    """A /topic publish reaches the other node's subscribers once; the origin, which
    delivered it locally, does not get it back; /queue/ stays local."""
    clock = Clock()
    hub = MemoryHub(clock)
    a, b = Node(hub), Node(hub)
    on_a, on_b = watch(a.broker, "/topic/news"), watch(b.broker, "/topic/news")
    a.broker.publish("/topic/news", b"hello", {"x-k": "v"})
    a.broker.publish("/queue/jobs", b"job")
    settle(clock)
    assert [m.body for m in on_a.messages] == [b"hello"]
    assert [(m.body, m.headers) for m in on_b.messages] == [(b"hello", {"x-k": "v"})]
    assert b.broker.queue_depth("/queue/jobs") == 0


def test_the_hub_refuses_what_redis_would() -> None:
    """The hub runs only the numbering script, with whole argument groups."""
    hub = MemoryHub(Clock())
    assert isinstance(result_of(hub.run_script("return 1", [0])), Failure)
    bad = result_of(hub.run_script(SEQUENCE_AND_PUBLISH, [1, 1000, 60, "k", 0]))
    assert isinstance(bad, Failure) and "arguments" in bad.getErrorMessage()
    worse = result_of(hub.run_script(SEQUENCE_AND_PUBLISH, [1, "k", 0]))
    assert isinstance(worse, Failure) and "numbers" in worse.getErrorMessage()


def test_history_of_a_room_not_followed_comes_from_the_clusters_recent_list() -> None:
    """A server that does not follow a room answers its history from the database and the
    cluster's recent list together, in seq order, each message once."""
    clock = Clock()
    hub = MemoryHub(clock)
    talker = Node(hub)
    for i in range(3):
        talker.talk(6, f"t{i}")
    settle(clock)
    absent = Node(hub)  # its relay is stopped: it follows nothing
    absent.relay.stopService()
    talker.talk(6, "t3")
    settle(clock)
    page = result_of(absent.chat.history(6, 10))
    assert [(m.seq, m.text) for m in page] == [(1, "t0"), (2, "t1"), (3, "t2"), (4, "t3")]
    after = result_of(absent.chat.history(6, 10, after=2))
    assert [m.seq for m in after] == [3, 4]
    hub.up = False
    assert result_of(absent.chat.history(6, 10)) == [], "the database alone when the hub is down"
