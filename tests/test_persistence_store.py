"""The ChatStore contract, checked on SQLite, PostgreSQL and the in-memory twin."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest_twisted

from stomp_chat.persistence import (
    AdbapiChatStore,
    ChatStore,
    make_pool,
    migrate,
    parse_database_url,
)
from tests.chatmessages import T0, chat_message, seqs

if TYPE_CHECKING:
    pass

pytest_plugins = ["tests.conftest_db"]


# -- messages ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_history_survives_a_restart(tmp_path: Path) -> None:
    """Messages written through one pool are all there after closing it and reopening the
    SQLite file (migrations run again without harm)."""
    config = parse_database_url(f"sqlite:///{tmp_path / 'chat.db'}")
    first_pool = make_pool(config)
    version = await migrate(first_pool)
    first = AdbapiChatStore(first_pool)
    member = await first.create_member("alice")
    written = [chat_message(1, seq) for seq in range(1, 51)]
    await first.save_messages(written)
    await first.close()

    second_pool = make_pool(config)
    try:
        assert await migrate(second_pool) == version
        second = AdbapiChatStore(second_pool)
        assert await second.load_messages(1, limit=100) == written
        assert await second.get_member_by_name("alice") == member
        assert await second.last_seq(1) == 50
    finally:
        second_pool.close()


# -- retention -----------------------------------------------------------------------------


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
