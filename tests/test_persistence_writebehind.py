"""Write-behind batching: unit tests on a fake clock, and an outage against real PostgreSQL."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet import task
from twisted.internet.defer import Deferred, fail
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure

from stomp_chat.persistence import (
    AdbapiChatStore,
    BufferFull,
    ChatMessage,
    MemoryChatStore,
    MessagesRejected,
    SeqCollision,
    WriteBehindWriter,
    WriterStopped,
    migrate,
)

if TYPE_CHECKING:
    from tests.conftest_db import CuttableProxy, TestDatabase

pytest_plugins = ["tests.conftest_db"]

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def chat_message(seq: int, room_id: int = 1, text: str = "hi") -> ChatMessage:
    return ChatMessage(
        room_id=room_id,
        seq=seq,
        message_id=f"r{room_id}-m{seq}",
        type="TALK",
        sender_id=1,
        text=text,
        created_at=T0,
    )


class ControlledStore(MemoryChatStore):
    """Each save waits until the test commits or fails it; it also checks that the writer
    never has two batches in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[ChatMessage, ...]] = []
        self._in_flight: Deferred[None] | None = None

    def save_messages(self, messages: Sequence[ChatMessage]) -> Deferred[None]:
        assert self._in_flight is None, "a second batch was sent while one is in flight"
        self.batches.append(tuple(messages))
        self._in_flight = Deferred()
        return self._in_flight

    @property
    def busy(self) -> bool:
        return self._in_flight is not None

    def commit(self) -> None:
        deferred, self._in_flight = self._in_flight, None
        assert deferred is not None
        super().save_messages(self.batches[-1])
        deferred.callback(None)

    def fail(self, error: Exception) -> None:
        deferred, self._in_flight = self._in_flight, None
        assert deferred is not None
        deferred.errback(error)


class FlakyStore(MemoryChatStore):
    """Fails the first `failures` saves as a database outage would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures_left = failures
        self.attempts: list[tuple[float, tuple[int, ...]]] = []
        self.clock: task.Clock | None = None

    def save_messages(self, messages: Sequence[ChatMessage]) -> Deferred[None]:
        assert self.clock is not None
        self.attempts.append((self.clock.seconds(), tuple(m.seq for m in messages)))
        if self.failures_left > 0:
            self.failures_left -= 1
            return fail(ConnectionError("connection to the database lost"))
        return super().save_messages(messages)


class PickyStore(MemoryChatStore):
    """Refuses, like a database would, any batch holding a message whose text is "poison"."""

    def save_messages(self, messages: Sequence[ChatMessage]) -> Deferred[None]:
        if any(message.text == "poison" for message in messages):
            return fail(MessagesRejected("invalid byte sequence"))
        return super().save_messages(messages)


class RecordingProducer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")


def stored(store: MemoryChatStore, room_id: int = 1) -> list[int]:
    loaded = store.load_messages(room_id, limit=10**6)
    return [message.seq for message in loaded.result]


def started_writer(
    store: MemoryChatStore, clock: task.Clock, **options: object
) -> WriteBehindWriter:
    writer = WriteBehindWriter(store, clock, **options)  # type: ignore[arg-type]
    writer.startService()
    return writer


# -- batching ----------------------------------------------------------------------------


def test_batches_by_time() -> None:
    """Messages are held for flush_interval and then written together in one batch."""
    clock, store = task.Clock(), MemoryChatStore()
    writer = started_writer(store, clock, flush_interval=0.05)
    for seq in (1, 2, 3):
        writer.append(chat_message(seq))
    clock.advance(0.049)
    assert store.save_calls == 0
    clock.advance(0.001)
    assert store.save_calls == 1
    assert stored(store) == [1, 2, 3]
    assert writer.pending_count == 0


def test_batches_by_size() -> None:
    """A full batch is written at once without waiting for the interval, and a backlog left
    behind by a full batch is written right after it, in order."""
    clock, store = task.Clock(), ControlledStore()
    writer = started_writer(store, clock, flush_interval=10, max_batch=3)
    writer.append(chat_message(1))
    writer.append(chat_message(2))
    clock.advance(0)
    assert store.batches == [], "two messages wait for the interval"
    for seq in range(3, 8):
        writer.append(chat_message(seq))
    clock.advance(0)
    assert [[m.seq for m in batch] for batch in store.batches] == [[1, 2, 3]]
    store.commit()
    clock.advance(0)
    store.commit()
    clock.advance(0)
    store.commit()
    assert [[m.seq for m in batch] for batch in store.batches] == [[1, 2, 3], [4, 5, 6], [7]]
    assert stored(store) == list(range(1, 8))
    assert clock.seconds() == 0


def test_one_batch_in_flight_and_order_kept() -> None:
    """Messages appended while a batch is being written wait for it, then follow in order."""
    clock, store = task.Clock(), ControlledStore()
    writer = started_writer(store, clock, flush_interval=0.05)
    writer.append(chat_message(1))
    writer.append(chat_message(2))
    clock.advance(0.05)
    assert store.busy
    for seq in (3, 4, 5):
        writer.append(chat_message(seq))
    clock.advance(1)
    assert len(store.batches) == 1, "no second batch while the first is in flight"
    assert writer.pending_count == 5
    store.commit()
    clock.advance(0)
    store.commit()
    written = [m.seq for batch in store.batches for m in batch]
    assert written == [1, 2, 3, 4, 5]
    assert writer.pending_count == 0


def test_a_late_message_keeps_its_own_deadline() -> None:
    """A message arriving while a batch is in flight is written flush_interval after its
    arrival: not as soon as the batch commits, and not later."""
    clock, store = task.Clock(), ControlledStore()
    writer = started_writer(store, clock, flush_interval=0.5)
    writer.append(chat_message(1))
    clock.advance(0.5)
    clock.advance(0.25)
    writer.append(chat_message(2))
    store.commit()
    clock.advance(0.25)
    assert len(store.batches) == 1
    clock.advance(0.25)
    assert [[m.seq for m in batch] for batch in store.batches] == [[1], [2]]


def test_nothing_is_written_before_the_service_starts() -> None:
    """Messages appended before startService are buffered and written once it starts."""
    clock, store = task.Clock(), MemoryChatStore()
    writer = WriteBehindWriter(store, clock, flush_interval=0.05)
    writer.append(chat_message(1))
    clock.advance(1)
    assert store.save_calls == 0
    writer.startService()
    clock.advance(0.05)
    assert stored(store) == [1]


# -- durability and flushing -------------------------------------------------------------


def test_plain_append_returns_nothing() -> None:
    """The fast path creates no Deferred for callers that do not wait for the commit."""
    writer = started_writer(MemoryChatStore(), task.Clock())
    assert writer.append(chat_message(1)) is None  # type: ignore[func-returns-value]


def test_durable_append_fires_after_commit() -> None:
    """A durable append fires only once the batch holding the message has committed."""
    clock, store = task.Clock(), ControlledStore()
    writer = started_writer(store, clock)
    writer.append(chat_message(1))
    committed = writer.append_durable(chat_message(2))
    writer.append(chat_message(3))
    clock.advance(0.05)
    assert not committed.called
    store.commit()
    assert committed.called and committed.result is None
    assert stored(store) == [1, 2, 3]


def test_ignored_durable_deferreds_log_nothing() -> None:
    """Durable Deferreds nobody waits on are fired quietly: no "Unhandled error" is logged."""
    clock, store = task.Clock(), MemoryChatStore()
    writer = started_writer(store, clock)
    with capturedLogs() as events:
        for seq in range(1, 101):
            writer.append_durable(chat_message(seq))
        clock.advance(0.05)
        gc.collect()
    assert stored(store) == list(range(1, 101))
    assert [e for e in events if e.get("log_level", LogLevel.info) >= LogLevel.warn] == []


def test_flush_writes_now() -> None:
    """flush() writes without waiting for the interval and fires once all is saved."""
    clock, store = task.Clock(), ControlledStore()
    writer = started_writer(store, clock, flush_interval=10, max_batch=2)
    for seq in (1, 2, 3):
        writer.append(chat_message(seq))
    flushed = writer.flush()
    writer.append(chat_message(4))
    clock.advance(0)
    store.commit()
    assert not flushed.called
    clock.advance(0)
    store.commit()
    assert flushed.called
    assert [[m.seq for m in batch] for batch in store.batches] == [[1, 2], [3, 4]]
    assert writer.flush().called, "with nothing pending, flush fires at once"


# -- back-pressure -----------------------------------------------------------------------


def test_full_buffer_refuses_and_recovers() -> None:
    """At max_pending, append raises BufferFull; once saved, appends are accepted again."""
    clock, store = task.Clock(), ControlledStore()
    writer = started_writer(store, clock, max_pending=5, max_batch=2)
    for seq in range(1, 6):
        writer.append(chat_message(seq))
    assert writer.is_full
    with pytest.raises(BufferFull) as refused:
        writer.append(chat_message(6))
    assert (refused.value.pending, refused.value.limit) == (5, 5)
    with pytest.raises(BufferFull):
        writer.append_durable(chat_message(6))
    clock.advance(0)
    store.commit()
    assert not writer.is_full and writer.pending_count == 3
    writer.append(chat_message(6))
    assert writer.pending_count == 4


def test_producers_pause_at_high_water_and_resume_at_low_water() -> None:
    """Registered publishers are paused above the high-water mark and resumed once the
    backlog drains to the low-water mark; late registrations start paused."""
    clock, store = task.Clock(), ControlledStore()
    writer = started_writer(store, clock, max_pending=10, max_batch=3, high_water=6, low_water=2)
    early = RecordingProducer()
    writer.register_producer(early)
    for seq in range(1, 6):
        writer.append(chat_message(seq))
    assert early.events == [] and not writer.is_paused
    writer.append(chat_message(6))
    assert early.events == ["pause"] and writer.is_paused
    late = RecordingProducer()
    writer.register_producer(late)
    assert late.events == ["pause"]
    clock.advance(0)
    store.commit()
    assert writer.pending_count == 3 and early.events == ["pause"]
    clock.advance(0)
    store.commit()
    assert writer.pending_count == 0
    assert early.events == late.events == ["pause", "resume"]
    writer.unregister_producer(late)
    for seq in range(7, 13):
        writer.append(chat_message(seq))
    assert late.events == ["pause", "resume"]
    assert early.events == ["pause", "resume", "pause"]


# -- shutdown ----------------------------------------------------------------------------


def test_stop_flushes_everything_and_waits_for_the_batch_in_flight() -> None:
    """stopService waits for the batch in flight and writes all that is buffered first."""
    clock, store = task.Clock(), ControlledStore()
    writer = started_writer(store, clock, flush_interval=10, max_batch=2)
    for seq in range(1, 6):
        writer.append(chat_message(seq))
    clock.advance(0)
    assert store.busy
    stopped = writer.stopService()
    for _ in range(2):
        assert not stopped.called
        store.commit()
        clock.advance(0)
    assert not stopped.called
    store.commit()
    assert stopped.called
    assert stored(store) == [1, 2, 3, 4, 5]
    with pytest.raises(WriterStopped):
        writer.append(chat_message(6))


def test_stop_with_nothing_pending_is_immediate() -> None:
    """An idle writer stops at once."""
    writer = started_writer(MemoryChatStore(), task.Clock())
    assert writer.stopService().called


# -- failures ----------------------------------------------------------------------------


def test_outage_retries_the_same_batch_with_backoff() -> None:
    """During an outage the same batch is retried with doubling delays up to retry_max,
    newer messages wait behind it, and everything is stored once, in order."""
    clock, store = task.Clock(), FlakyStore(failures=5)
    store.clock = clock
    writer = started_writer(
        store, clock, flush_interval=0.05, max_batch=3, retry_initial=0.1, retry_max=0.5
    )
    with capturedLogs() as events:
        for seq in (1, 2):
            writer.append(chat_message(seq))
        committed = writer.append_durable(chat_message(3))
        clock.advance(0.05)
        for seq in (4, 5, 6, 7):
            writer.append(chat_message(seq))
        clock.pump([0.1, 0.2, 0.4, 0.5, 0.5])
        assert committed.called
        clock.advance(0)
        clock.advance(0.05)
    times = [round(at, 3) for at, _ in store.attempts]
    assert times[:6] == [0.05, 0.15, 0.35, 0.75, 1.25, 1.75]
    assert {batch for _, batch in store.attempts[:6]} == {(1, 2, 3)}
    assert [batch for _, batch in store.attempts[6:]] == [(4, 5, 6), (7,)]
    assert stored(store) == [1, 2, 3, 4, 5, 6, 7]
    errors = [e for e in events if e["log_level"] >= LogLevel.error]
    assert len(errors) == 1, "one report per outage, not one per attempt"
    assert any("again after" in e["log_format"] for e in events)
    assert not writer.is_retrying


def test_stop_waits_out_an_outage() -> None:
    """Stopping during an outage keeps retrying until the messages are saved."""
    clock, store = task.Clock(), FlakyStore(failures=3)
    store.clock = clock
    writer = started_writer(store, clock, retry_initial=0.1, retry_max=1)
    writer.append(chat_message(1))
    clock.advance(0.05)
    stopped = writer.stopService()
    clock.pump([0.1, 0.2])
    assert not stopped.called
    clock.advance(0.4)
    assert stopped.called
    assert stored(store) == [1]


def test_a_rejected_message_is_dropped_alone() -> None:
    """A message the database refuses is isolated and dropped; all the others are stored in
    order and the poison message's durable Deferred reports the rejection."""
    clock, store = task.Clock(), PickyStore()
    writer = started_writer(store, clock, max_batch=8)
    accepted = []
    poison = None
    with capturedLogs() as events:
        for seq in range(1, 11):
            if seq == 6:
                poison = writer.append_durable(chat_message(seq, text="poison"))
            else:
                accepted.append(writer.append_durable(chat_message(seq)))
        for _ in range(20):
            clock.advance(0.05)
    assert stored(store) == [1, 2, 3, 4, 5, 7, 8, 9, 10]
    assert poison is not None and poison.called
    rejection = []
    poison.addErrback(rejection.append)
    assert rejection[0].check(MessagesRejected)
    assert all(deferred.called and deferred.result is None for deferred in accepted)
    assert writer.rejected_count == 1 and writer.saved_count == 9
    dropped = [e for e in events if e["log_level"] >= LogLevel.error]
    assert len(dropped) == 1 and dropped[0]["message_id"] == "r1-m6"


def test_bad_settings_are_refused() -> None:
    """Inconsistent limits are reported when the writer is built, not at the first outage."""
    with pytest.raises(ValueError):
        WriteBehindWriter(MemoryChatStore(), task.Clock(), retry_initial=1, retry_max=0.5)
    with pytest.raises(ValueError):
        WriteBehindWriter(MemoryChatStore(), task.Clock(), max_pending=10, high_water=11)


# -- against a real database -------------------------------------------------------------


def _sleep(seconds: float) -> Deferred[None]:
    return task.deferLater(global_reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_postgres_outage_loses_and_duplicates_nothing(
    postgresql_database: TestDatabase, postgres_proxy: CuttableProxy
) -> None:
    """With PostgreSQL cut off for about a second mid-stream, every accepted message is
    stored exactly once and in order, and a durable append fires only after the cut ends."""
    pool = postgresql_database.open_pool(postgres_proxy.route(postgresql_database.config))
    await migrate(pool)
    writer = WriteBehindWriter(
        AdbapiChatStore(pool),
        global_reactor,
        flush_interval=0.01,
        retry_initial=0.02,
        retry_max=0.2,
    )
    writer.startService()
    seq = 0

    def publish() -> None:
        nonlocal seq
        for _ in range(5):
            seq += 1
            writer.append(chat_message(seq, room_id=1 + seq % 2))

    publishing = task.LoopingCall(publish)
    publishing.clock = global_reactor
    with capturedLogs() as events:
        publishing.start(0.005)
        await _sleep(0.3)
        postgres_proxy.cut()
        await _sleep(0.2)
        seq += 1
        during_outage = writer.append_durable(chat_message(seq, room_id=1 + seq % 2))
        await _sleep(0.8)
        assert writer.is_retrying, "the cut must have made writes fail"
        assert not during_outage.called
        postgres_proxy.restore()
        await during_outage
        await _sleep(0.3)
        publishing.stop()
        stopping = writer.stopService()
        stopping.addTimeout(10, global_reactor)
        await stopping

    rows = postgresql_database.query(
        "SELECT room_id, seq, message_id FROM messages ORDER BY room_id, seq"
    )
    expected = sorted((1 + n % 2, n, f"r{1 + n % 2}-m{n}") for n in range(1, seq + 1))
    assert rows == expected
    assert writer.saved_count == seq and writer.rejected_count == 0
    errors = [e for e in events if e.get("log_level", LogLevel.info) >= LogLevel.error]
    assert len(errors) == 1, "the pool stays quiet; the writer reports the outage once"


# -- seq collisions, stop deadline, flush order ----------------------------------------------


def test_a_seq_collision_fails_only_that_durable_message() -> None:
    """A message whose (room, seq) already holds a different message is not counted as
    saved: its durable Deferred fails with SeqCollision and listeners hear of it, while the
    rest of the batch is stored and acknowledged."""
    clock, store = task.Clock(), MemoryChatStore()
    store.save_messages([chat_message(2, text="stored first")])
    writer = started_writer(store, clock, flush_interval=1)
    heard: list[ChatMessage] = []
    writer.collision_listeners.append(heard.append)
    durable = [writer.append_durable(chat_message(seq, text="new")) for seq in (1, 2, 3)]
    outcomes: list[object] = []
    for d in durable:
        d.addBoth(outcomes.append)
    with capturedLogs() as events:
        clock.advance(1)
    assert outcomes[0] is None and outcomes[2] is None
    failure = outcomes[1]
    assert isinstance(failure, Failure) and failure.check(SeqCollision)
    assert heard == [chat_message(2, text="new")]
    assert writer.saved_count == 2 and writer.collided_count == 1
    assert [m.text for m in store.load_messages(1, 10).result] == ["new", "stored first", "new"]
    assert any(e.get("log_level") == LogLevel.error for e in events), "never silent"


def test_a_retried_batch_meeting_its_own_rows_is_no_collision() -> None:
    """A batch saved again after an unknown outcome finds its own messages: no collision."""
    clock, store = task.Clock(), MemoryChatStore()
    store.save_messages([chat_message(1), chat_message(2)])
    writer = started_writer(store, clock, flush_interval=1)
    durable = writer.append_durable(chat_message(2))
    clock.advance(1)
    assert durable.called and durable.result is None
    assert writer.collided_count == 0


def test_stop_gives_up_after_stop_timeout_when_the_database_never_answers() -> None:
    """With the database silent, stopping gives up after stop_timeout: the unsaved messages
    are reported lost, durable waiters fail (no receipt), and the stop completes."""
    clock, store = task.Clock(), ControlledStore()
    writer = started_writer(store, clock, flush_interval=0.1, stop_timeout=5)
    writer.append(chat_message(1))
    durable = writer.append_durable(chat_message(2))
    clock.advance(0.1)
    assert store.busy
    stopped = writer.stopService()
    with capturedLogs() as events:
        clock.advance(4.9)
        assert not stopped.called
        clock.advance(0.1)
    assert stopped.called
    failures: list[Failure] = []
    durable.addErrback(failures.append)
    assert failures and failures[0].check(WriterStopped)
    assert writer.lost_count == 2 and writer.pending_count == 0
    assert any(e.get("log_level") == LogLevel.critical for e in events)
    with pytest.raises(WriterStopped):
        writer.append(chat_message(3))


def test_flush_fires_after_every_receipt_callback_of_earlier_messages() -> None:
    """flush() fires after the callbacks of every durable message appended before it ran,
    so a shutdown that waits for it has sent every receipt that is due."""
    clock, store = task.Clock(), ControlledStore()
    writer = started_writer(store, clock, flush_interval=10, max_batch=2)
    events: list[str] = []
    for seq in range(1, 6):
        writer.append_durable(chat_message(seq)).addCallback(
            lambda _, seq=seq: events.append(f"receipt {seq}")
        )
    writer.flush().addCallback(lambda _: events.append("flushed"))
    writer.append_durable(chat_message(6)).addCallback(lambda _: events.append("receipt 6"))
    for _ in range(2):
        clock.advance(0)
        store.commit()
    assert events == [f"receipt {seq}" for seq in range(1, 5)]
    clock.advance(0)
    store.commit()  # messages 5 and 6 in one batch: 5's receipt, the flush, then 6's
    assert events == [f"receipt {seq}" for seq in range(1, 6)] + ["flushed", "receipt 6"]


def test_expected_messages_count_towards_the_water_marks_and_the_limit() -> None:
    """Messages announced with expect() (waiting for their room) pause publishers at the
    high-water mark and count against has_room_for, until they are appended or dropped."""
    clock, producer = task.Clock(), RecordingProducer()
    writer = started_writer(MemoryChatStore(), clock, max_pending=10, high_water=6, low_water=2)
    writer.register_producer(producer)
    writer.append(chat_message(1))
    writer.expect(4)
    assert producer.events == []
    writer.expect(1)
    assert producer.events == ["pause"]
    assert writer.has_room_for(4) and not writer.has_room_for(5)
    writer.expect(-3)
    assert producer.events == ["pause"], "still above the low-water mark"
    writer.expect(-2)
    assert producer.events == ["pause", "resume"]
