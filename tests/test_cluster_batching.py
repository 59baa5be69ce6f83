"""Per-turn batching of chat messages: script calls per turn, and knowing when every message
added has its seq (what a stopping relay waits for)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from stomp_chat.cluster import MemoryHub
from stomp_chat.cluster.batching import MAX_SCRIPT_BATCH, NEEDS_FLOOR, ChatEntry, TurnBatch


def entry(room_id: int, placeholder: bytes = b"\x00", floor: int = 0,
          durable_floor: Any = None) -> ChatEntry:
    return ChatEntry(
        room_id, f"t:seq:{room_id}", f"t:recent:{room_id}", f"t:/topic/chat/room/{room_id}",
        floor, b'["n",true,{},', b'{"seq": \x00}'.replace(b"\x00", placeholder), placeholder,
        Deferred(), durable_floor,
    )


class Calls:
    """The hub's numbering script, with each call's message count noted."""

    def __init__(self, hub: MemoryHub) -> None:
        self.hub = hub
        self.counts: list[int] = []
        self.placeholders: list[bytes] = []

    def __call__(self, script: str, args: list[Any]) -> Deferred[Any]:
        self.counts.append(int(args[0]))
        self.placeholders.append(args[3])
        return self.hub.run_script(script, args)


def batch_on_hub() -> tuple[Clock, MemoryHub, TurnBatch, Calls]:
    clock = Clock()
    hub = MemoryHub(clock, "t")
    calls = Calls(hub)
    return clock, hub, TurnBatch(clock, hub.publish, calls), calls


def results(entries: list[ChatEntry]) -> list[Any]:
    out: list[Any] = []
    for e in entries:
        e.deferred.addBoth(out.append)
    return out


def test_a_turns_messages_go_in_one_call_per_placeholder_and_per_few_hundred() -> None:
    """One script call for a turn's messages; a different placeholder or more than
    MAX_SCRIPT_BATCH messages start another call, in order."""
    clock, hub, batch, calls = batch_on_hub()
    hub.counters["t:seq:1"] = 100  # rooms that have a counter
    hub.counters["t:seq:2"] = 200
    entries = [entry(1) for _ in range(MAX_SCRIPT_BATCH + 3)] + [entry(2, b"\x01"), entry(1)]
    seqs = results(entries)
    for e in entries:
        batch.add_chat(e)
    clock.advance(0)
    assert calls.counts == [MAX_SCRIPT_BATCH, 3, 1, 1]
    assert calls.placeholders == [b"\x00", b"\x00", b"\x01", b"\x00"]
    assert seqs == [*range(101, MAX_SCRIPT_BATCH + 104), 201, MAX_SCRIPT_BATCH + 104]
    channel, payload = hub.published[2]
    assert channel == "t:/topic/chat/room/2" and payload.endswith(b'{"seq": 201}')


def test_settled_waits_for_every_seq_including_messages_parked_for_the_floor() -> None:
    """settled() fires once every message added has its seq: a room whose counter Redis lost
    waits for its floor from the database, and settled() waits with it."""
    clock, hub, batch, _ = batch_on_hub()
    hub.counters["t:seq:1"] = 4
    floor: Deferred[int] = Deferred()
    known, lost = entry(1), entry(2, durable_floor=lambda room: floor)
    seqs = results([known, lost])
    batch.add_chat(known)
    batch.add_chat(lost)
    done: list[Any] = []
    batch.settled().addCallback(done.append)
    clock.advance(0)
    assert seqs == [5] and done == [] and batch.unsettled == 1
    floor.callback(10)
    clock.advance(0)
    assert seqs == [5, 11]
    assert done == [None] and batch.unsettled == 0
    assert batch.settled().called


def test_settled_counts_failures_as_told() -> None:
    """A script call that fails, or a floor that cannot be read, settles its messages too
    (each with the failure)."""
    clock = Clock()
    batch = TurnBatch(clock, lambda channel, payload: succeed(0),
                      lambda script, args: fail(ConnectionError("gone")))
    failing = entry(1)
    seqs = results([failing])
    batch.add_chat(failing)
    clock.advance(0)
    assert isinstance(seqs[0], Failure) and batch.unsettled == 0

    answers = [NEEDS_FLOOR]
    batch = TurnBatch(clock, lambda channel, payload: succeed(0),
                      lambda script, args: succeed(list(answers)))
    parked = entry(3, durable_floor=lambda room: fail(OSError("database down")))
    seqs = results([parked])
    batch.add_chat(parked)
    waiting = batch.settled()
    clock.advance(0)
    assert isinstance(seqs[0], Failure) and seqs[0].check(OSError)
    assert waiting.called and batch.unsettled == 0


def test_a_script_runner_that_raises_fails_its_messages_at_once() -> None:
    """A link that went down between accepting and sending: the messages fail, and are
    settled."""
    clock = Clock()

    def down(script: str, args: list[Any]) -> Deferred[Any]:
        raise ConnectionError("not connected")

    batch = TurnBatch(clock, lambda channel, payload: succeed(0), down)
    entries = [entry(1), entry(1)]
    seqs = results(entries)
    for e in entries:
        batch.add_chat(e)
    clock.advance(0)
    assert [s.check(ConnectionError) for s in seqs] == [ConnectionError, ConnectionError]
    assert batch.unsettled == 0


def test_a_room_whose_counter_was_lost_keeps_its_senders_order() -> None:
    """Redis answers without a seq for a room whose counter it lost. Messages sent before
    that answer came back answer the same; newer ones wait. Once the floor is read, all go
    again in the order they were sent, even when the floor is read before the earlier
    answers are back."""
    clock = Clock()
    hub = MemoryHub(clock, "t")
    replies: list[tuple[Deferred[Any], Any]] = []

    def answered_later(script: str, args: list[Any]) -> Deferred[Any]:
        """Redis runs the call when it arrives; its answer comes back when the test says."""
        d: Deferred[Any] = Deferred()
        replies.append((d, hub.run_script(script, args).result))
        return d

    def answer_next() -> None:
        d, result = replies.pop(0)
        d.callback(result)

    batch = TurnBatch(clock, hub.publish, answered_later)
    floor: Deferred[int] = Deferred()
    m1, m2, m3, m4 = (entry(5, durable_floor=lambda room: floor) for _ in range(4))
    seqs = results([m1, m2, m3, m4])
    batch.add_chat(m1)
    clock.advance(0)  # sent: Redis has no counter for room 5
    batch.add_chat(m2)
    clock.advance(0)  # sent before m1's answer
    answer_next()  # m1: no seq; the floor is read
    batch.add_chat(m3)  # newer: waits
    floor.callback(40)  # read before m2's answer is back
    clock.advance(0)
    assert seqs == [] and len(replies) == 1, "nothing goes again while m2 is with Redis"
    answer_next()  # m2: no seq either
    batch.add_chat(m4)
    clock.advance(0)
    while replies:
        answer_next()
    clock.advance(0)
    assert seqs == [41, 42, 43, 44]
    assert batch.unsettled == 0
