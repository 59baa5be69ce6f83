"""Tests for stomp_chat.retention: the periodic job that removes old messages in batches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from stomp_chat.persistence import ChatMessage, MemoryChatStore
from stomp_chat.retention import RetentionService

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def _message(room_id: int, seq: int, age: timedelta) -> ChatMessage:
    return ChatMessage(room_id, seq, f"{room_id}-{seq}", "TALK", 1, "x", NOW - age)


def _store() -> MemoryChatStore:
    store = MemoryChatStore()
    old = [_message(1, seq, timedelta(days=40)) for seq in range(1, 26)]
    new = [_message(1, seq, timedelta(days=1)) for seq in range(26, 31)]
    store.save_messages(old + new)
    return store


def test_a_pass_removes_everything_older_in_batches() -> None:
    """One pass deletes batch after batch until nothing older than N days is left."""
    clock = Clock()
    store = _store()
    service = RetentionService(store, clock, days=30, batch=10, now=lambda: NOW)
    results = []
    service.run_once().addCallback(results.append)
    clock.pump([0] * 5)
    assert results == [25]
    remaining = []
    store.load_messages(1, 100).addCallback(remaining.append)
    assert [m.seq for m in remaining[0]] == list(range(26, 31))


def test_batches_take_separate_reactor_turns() -> None:
    """Between two full batches the job yields to the reactor."""
    clock = Clock()
    calls = []

    class CountingStore:
        def delete_messages_before(self, cutoff, limit):
            calls.append(cutoff)
            return succeed(limit if len(calls) < 3 else 0)

    service = RetentionService(CountingStore(), clock, days=7, batch=5, now=lambda: NOW)
    service.run_once()
    assert len(calls) == 1, "the second batch waits for the reactor"
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert len(calls) == 3
    assert calls[0] == NOW - timedelta(days=7)


def test_the_job_runs_at_start_and_every_interval() -> None:
    """Started, the service runs a pass at once and then every interval."""
    clock = Clock()
    calls = []

    class CountingStore:
        def delete_messages_before(self, cutoff, limit):
            calls.append(cutoff)
            return succeed(0)

    service = RetentionService(CountingStore(), clock, days=1, interval=3600, now=lambda: NOW)
    service.startService()
    clock.pump([3600, 3600])
    assert len(calls) == 3
    service.stopService()
    clock.advance(7200)
    assert len(calls) == 3


def test_a_failed_pass_is_logged_and_tried_again_later() -> None:
    """A database error ends the pass quietly; the next interval tries again."""
    clock = Clock()
    attempts = []

    class FailingStore:
        def delete_messages_before(self, cutoff, limit):
            attempts.append(1)
            return fail(RuntimeError("database down"))

    service = RetentionService(FailingStore(), clock, days=1, interval=60, now=lambda: NOW)
    service.startService()
    clock.advance(60)
    assert len(attempts) == 2
    service.stopService()


def test_stopping_waits_for_the_batch_under_way() -> None:
    """stopService returns the running pass, so the pool closes only after its batch."""
    clock = Clock()
    pending: Deferred[int] = Deferred()

    class SlowStore:
        def delete_messages_before(self, cutoff, limit):
            return pending

    service = RetentionService(SlowStore(), clock, days=1, now=lambda: NOW)
    service.startService()
    stopped = service.stopService()
    assert isinstance(stopped, Deferred) and not stopped.called
    pending.callback(0)
    assert stopped.called


def test_the_real_server_removes_old_messages(start_server, tmp_path) -> None:
    """With --retention-days, the running server removes messages older than that at once,
    keeping each room's newest."""
    import json
    import signal
    import sqlite3
    import time

    from tests.stompload import RawStompClient

    database = tmp_path / "chat.db"
    server = start_server(f"--database=sqlite:///{database}")
    client = RawStompClient(server.stomp_port)
    for number in range(5):
        body = json.dumps({"type": "TALK", "roomId": 3, "senderId": 1,
                           "detailMessage": f"m{number}"})
        client.send("SEND", {"destination": "/app/message", "receipt": f"r{number}"},
                    body.encode())
    deadline = time.monotonic() + 10
    while len(client.receipts) < 5:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    client.close()
    server.signal(signal.SIGTERM)
    server.wait()
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE messages SET created_at = '2000-01-01T00:00:00.000000Z'")
    server = start_server(f"--database=sqlite:///{database}", "--retention-days=30")
    deadline = time.monotonic() + 10
    while "retention: removed 4 message(s) older than 30 days" not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT seq FROM messages").fetchall() == [(5,)]
