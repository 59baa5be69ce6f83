"""Reading history (persistence/history.py): pages in every direction and a room's highest seq;
on SQLite, PostgreSQL and the in-memory twin."""

from __future__ import annotations

import pytest
import pytest_twisted

from stomp_chat.persistence import ChatStore
from tests.chatmessages import chat_message, seqs

pytest_plugins = ["tests.conftest_db"]


@pytest_twisted.ensureDeferred
async def test_last_seq(store: ChatStore) -> None:
    """last_seq is 0 for a silent room and the highest seq otherwise, per room."""
    assert await store.last_seq(1) == 0
    await store.save_messages([chat_message(1, 3), chat_message(1, 1), chat_message(2, 9)])
    assert await store.last_seq(1) == 3
    assert await store.last_seq(2) == 9


@pytest_twisted.ensureDeferred
async def test_history_pages(store: ChatStore) -> None:
    """History pages are ascending: newest by default, older before a seq, newer after one."""
    await store.save_messages([chat_message(1, seq) for seq in range(1, 21)])
    await store.save_messages([chat_message(2, seq) for seq in range(1, 4)])
    assert seqs(await store.load_messages(1, limit=5)) == [16, 17, 18, 19, 20]
    assert seqs(await store.load_messages(1, limit=5, before_seq=16)) == [11, 12, 13, 14, 15]
    assert seqs(await store.load_messages(1, limit=5, before_seq=3)) == [1, 2]
    assert seqs(await store.load_messages(1, limit=5, after_seq=17)) == [18, 19, 20]
    assert seqs(await store.load_messages(1, limit=3, after_seq=4)) == [5, 6, 7]
    assert seqs(await store.load_messages(1, limit=3, after_seq=4, before_seq=6)) == [5]
    assert seqs(await store.load_messages(1, limit=100)) == list(range(1, 21))
    assert await store.load_messages(1, limit=0) == []
    assert await store.load_messages(3, limit=5) == []


def test_negative_history_limit_is_refused(store: ChatStore) -> None:
    """A negative limit is a caller bug, reported at once."""
    with pytest.raises(ValueError, match="negative"):
        store.load_messages(1, limit=-1)
