"""Seq reservations (persistence/reservations.py): a room's mark only rises unless given back
by its holder; on SQLite, PostgreSQL and the in-memory twin."""

from __future__ import annotations

import pytest_twisted
from twisted.internet.defer import gatherResults

from stomp_chat.persistence import ChatStore
from tests.chatmessages import chat_message

pytest_plugins = ["tests.conftest_db"]


@pytest_twisted.ensureDeferred
async def test_seq_reservations_only_ever_rise_unless_given_back(store: ChatStore) -> None:
    """reserve_seqs starts past everything stored or reserved; extending never lowers the
    mark; giving back lowers it only from the value the caller reserved."""
    assert await store.seq_floor(1) == 0
    assert await store.reserve_seqs(1, 5) == (0, 0, 5)
    await store.save_messages([chat_message(1, seq) for seq in range(1, 9)])
    assert await store.reserve_seqs(1, 5) == (8, 5, 13)
    assert await store.extend_seq_reservation(1, 10) == 13
    assert await store.extend_seq_reservation(1, 20) == 20
    assert await store.release_seq_reservation(1, 19, 15) is False
    assert await store.seq_floor(1) == 20
    assert await store.release_seq_reservation(1, 20, 15) is True
    assert await store.seq_floor(1) == 15
    await store.save_messages([chat_message(1, 16)])
    assert await store.seq_floor(1) == 16
    assert await store.seq_floor(2) == 0


@pytest_twisted.ensureDeferred
async def test_concurrent_reservations_keep_the_highest(store: ChatStore) -> None:
    """Reservations written at once (two servers) end at the highest one asked for."""
    await gatherResults([store.extend_seq_reservation(1, n) for n in (40, 90, 10, 70)])
    assert await store.seq_floor(1) == 90
