"""The database store as a whole (persistence/store.py): what it wrote is all there after
reopening the database."""

from __future__ import annotations

from pathlib import Path

import pytest_twisted

from stomp_chat.persistence import AdbapiChatStore, make_pool, migrate, parse_database_url
from tests.chatmessages import chat_message


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
