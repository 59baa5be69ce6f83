"""Removing messages (persistence/purge.py): old ones in batches and single ones, never freeing
a seq for reuse; on SQLite, PostgreSQL and the in-memory twin."""

from __future__ import annotations

from datetime import timedelta

import pytest_twisted

from stomp_chat.persistence import ChatStore
from tests.chatmessages import T0, chat_message, seqs

pytest_plugins = ["tests.conftest_db"]


@pytest_twisted.ensureDeferred
async def test_delete_messages_before_removes_old_ones_in_batches(store: ChatStore) -> None:
    """Messages older than the cut-off go, at most `limit` per call; newer ones stay."""
    await store.save_messages([chat_message(1, seq) for seq in range(1, 11)])
    cutoff = T0 + timedelta(milliseconds=6)  # seqs 1..5 are older
    assert await store.delete_messages_before(cutoff, 3) == 3
    assert await store.delete_messages_before(cutoff, 3) == 2
    assert await store.delete_messages_before(cutoff, 3) == 0
    assert seqs(await store.load_messages(1, 100)) == [6, 7, 8, 9, 10]


@pytest_twisted.ensureDeferred
async def test_delete_messages_before_keeps_each_rooms_newest(store: ChatStore) -> None:
    """However old, a room's newest message stays, so its next seq is never reused."""
    await store.save_messages([chat_message(1, 1), chat_message(1, 2), chat_message(2, 1)])
    assert await store.delete_messages_before(T0 + timedelta(days=1), 100) == 1
    assert seqs(await store.load_messages(1, 10)) == [2]
    assert seqs(await store.load_messages(2, 10)) == [1]
    assert await store.last_seq(1) == 2


@pytest_twisted.ensureDeferred
async def test_delete_message_removes_one_and_keeps_its_seq_reserved(store: ChatStore) -> None:
    """One message goes (True), a missing one is False, and the room's reservation covers
    the removed seq, so a room whose newest message was removed never hands it out again."""
    await store.save_messages([chat_message(1, seq) for seq in range(1, 4)])
    assert await store.delete_message(1, 3) is True
    assert await store.delete_message(1, 3) is False
    assert await store.delete_message(2, 1) is False
    assert seqs(await store.load_messages(1, 10)) == [1, 2]
    assert await store.last_seq(1) == 2
    assert await store.seq_floor(1) == 3
    stored, _, _ = await store.reserve_seqs(1, 1)
    assert stored == 2
    assert await store.seq_floor(1) == 4
