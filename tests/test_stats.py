"""Tests for stomp_chat.stats: the plain counters and the timed store wrapper."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from stomp_chat.stats import MAX_ERROR_REASONS, BucketCounts, ServerStats, TimedStore


def test_connections_are_counted_by_transport() -> None:
    """Opened connections accumulate per transport; open ones go down as they close."""
    stats = ServerStats()
    stats.connection_opened("tcp")
    stats.connection_opened("websocket")
    stats.connection_opened("tcp")
    stats.connection_closed("tcp")
    assert stats.connections_opened == {"tcp": 2, "websocket": 1}
    assert stats.connections_open == {"tcp": 1, "websocket": 1}
    assert stats.open_connections == 2


def test_unknown_commands_share_one_label() -> None:
    """Client commands are counted by name; anything else as 'other', keeping labels bounded."""
    stats = ServerStats()
    for command in ("SEND", "SEND", "XYZZY", "hello"):
        stats.frame_received(command)
    assert stats.frames_received == {"SEND": 2, "other": 2}


def test_error_reasons_are_short_and_bounded() -> None:
    """ERROR reasons drop details after ':' and past a bound fold into 'other'."""
    stats = ServerStats()
    stats.error_sent("frame too large: 99999 bytes")
    for number in range(MAX_ERROR_REASONS + 5):
        stats.error_sent(f"reason {number}")
    assert stats.errors["frame too large"] == 1
    assert len(stats.errors) == MAX_ERROR_REASONS + 1
    assert stats.errors["other"] == 6


def test_bucket_counts_are_cumulative() -> None:
    """Each observation counts in every bucket whose bound it does not exceed."""
    counts = BucketCounts((1.0, 10.0))
    for observed in (0.5, 5, 50):
        counts.observe(observed)
    assert counts.counts == [1, 2]
    assert (counts.count, counts.total) == (3, 55.5)


class SlowStore:
    def __init__(self) -> None:
        self.batches: list[Deferred[None]] = []

    def save_messages(self, messages):
        saving: Deferred[None] = Deferred()
        self.batches.append(saving)
        return saving

    def last_seq(self, room_id: int):
        return succeed(7)


def test_timed_store_notes_batch_size_and_write_time() -> None:
    """Each batch's size is noted at once and its write time when it commits."""
    clock = Clock()
    inner = SlowStore()
    store = TimedStore(inner, clock)
    saving = store.save_messages(["a", "b", "c"])
    assert store.batch_sizes.total == 3
    clock.advance(0.02)
    inner.batches[0].callback(None)
    assert saving.called
    assert store.flush_seconds.count == 1
    assert abs(store.flush_seconds.total - 0.02) < 1e-9


def test_timed_store_passes_failures_and_other_calls_through() -> None:
    """A failed write still reaches the writer as a failure; other calls go to the store."""
    clock = Clock()

    class FailingStore(SlowStore):
        def save_messages(self, messages):
            return fail(RuntimeError("database down"))

    store = TimedStore(FailingStore(), clock)
    failures = []
    store.save_messages(["a"]).addErrback(failures.append)
    assert failures and failures[0].check(RuntimeError)
    assert store.flush_seconds.count == 1
    results = []
    store.last_seq(1).addCallback(results.append)
    assert results == [7]
