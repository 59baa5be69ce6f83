"""Schema migrations, on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults

from stomp_chat.persistence import (
    MIGRATIONS,
    AdbapiChatStore,
    ChatMessage,
    Migration,
    SchemaTooNew,
    current_version,
    latest_version,
    migrate,
    schema,
)

if TYPE_CHECKING:
    from tests.conftest_db import TestDatabase

pytest_plugins = ["tests.conftest_db"]

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)

TABLE_COLUMNS = {
    "members": ["id", "name", "password_hash", "created_at"],
    "rooms": ["id", "name", "created_at", "private"],
    "room_members": ["room_id", "member_id", "joined_at"],
    "messages": ["room_id", "seq", "message_id", "type", "sender_id", "text", "created_at"],
}


def _column_names(transaction: Any, table: str) -> list[str]:
    transaction.execute(f"SELECT * FROM {table} WHERE 1 = 0")
    return [column[0] for column in transaction.description]


def test_both_dialects_share_one_version_history() -> None:
    """SQLite and PostgreSQL migrations may differ in SQL but never in their versions."""
    sqlite_versions = [migration.version for migration in MIGRATIONS["sqlite"]]
    postgres_versions = [migration.version for migration in MIGRATIONS["postgresql"]]
    assert sqlite_versions == postgres_versions == list(range(1, len(sqlite_versions) + 1))
    assert latest_version("sqlite") == latest_version("postgresql") == sqlite_versions[-1]


@pytest_twisted.ensureDeferred
async def test_migrate_creates_every_table(database: TestDatabase) -> None:
    """A fresh database gets every table with the expected columns and reports the version."""
    pool = database.open_pool()
    assert await current_version(pool) == 0
    reached = await migrate(pool)
    assert reached == latest_version(database.dialect)
    assert await current_version(pool) == reached
    for table, columns in TABLE_COLUMNS.items():
        assert await pool.runInteraction(_column_names, table) == columns


@pytest_twisted.ensureDeferred
async def test_migrate_is_idempotent(database: TestDatabase) -> None:
    """Running the migrations again changes nothing and records each version once."""
    pool = database.open_pool()
    first = await migrate(pool)
    await pool.runOperation(
        "INSERT INTO rooms (id, name, created_at) VALUES (7, 'kept', '2024-01-01T00:00:00Z')"
    )
    second = await migrate(pool)
    assert first == second
    versions = await pool.runQuery("SELECT version FROM schema_version ORDER BY version")
    assert [row[0] for row in versions] == list(range(1, first + 1))
    assert await pool.runQuery("SELECT name FROM rooms WHERE id = 7") == [("kept",)]


@pytest_twisted.ensureDeferred
async def test_concurrent_migrations_agree(database: TestDatabase) -> None:
    """Two pools migrating one empty database at once both succeed without duplicating work."""
    first_pool, second_pool = database.open_pool(), database.open_pool()
    reached = await gatherResults([migrate(first_pool), migrate(second_pool)])
    assert reached == [latest_version(database.dialect)] * 2
    count = await first_pool.runQuery("SELECT COUNT(*) FROM schema_version")
    assert count[0][0] == latest_version(database.dialect)


@pytest_twisted.ensureDeferred
async def test_a_later_migration_applies_on_top(
    database: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Appending a migration upgrades an existing database and keeps its data."""
    pool = database.open_pool()
    base = await migrate(pool)
    await pool.runOperation(
        "INSERT INTO rooms (id, name, created_at) VALUES (1, 'lobby', '2024-01-01T00:00:00Z')"
    )
    added = Migration(base + 1, "room topics", ("ALTER TABLE rooms ADD COLUMN topic TEXT",))
    extended = {dialect: (*migrations, added) for dialect, migrations in MIGRATIONS.items()}
    monkeypatch.setattr(schema, "MIGRATIONS", extended)
    assert await migrate(pool) == base + 1
    assert await pool.runQuery("SELECT name, topic FROM rooms") == [("lobby", None)]


@pytest_twisted.ensureDeferred
async def test_a_failing_migration_leaves_the_database_untouched(
    database: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration that fails half-way is rolled back entirely, version included."""
    pool = database.open_pool()
    base = await migrate(pool)
    broken = Migration(
        base + 1,
        "broken",
        ("CREATE TABLE half_done (x INTEGER)", "THIS IS NOT SQL"),
    )
    extended = {dialect: (*migrations, broken) for dialect, migrations in MIGRATIONS.items()}
    monkeypatch.setattr(schema, "MIGRATIONS", extended)
    with pytest.raises(pool.dbapi.Error):
        await migrate(pool)
    assert await current_version(pool) == base
    with pytest.raises(pool.dbapi.Error):
        await pool.runQuery("SELECT * FROM half_done")


@pytest_twisted.ensureDeferred
async def test_a_newer_schema_is_refused(database: TestDatabase) -> None:
    """An older release refuses to run against a database migrated by a newer one."""
    pool = database.open_pool()
    latest = await migrate(pool)
    await pool.runOperation(
        f"INSERT INTO schema_version (version, description) VALUES ({latest + 1}, 'future')"
    )
    with pytest.raises(SchemaTooNew, match=f"version {latest + 1}"):
        await migrate(pool)


def test_migration_versions_must_be_consecutive(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gap or reordering in the migration list is caught before touching the database."""
    gapped = (Migration(1, "a", ()), Migration(3, "c", ()))
    monkeypatch.setattr(schema, "MIGRATIONS", {"sqlite": gapped, "postgresql": gapped})
    with pytest.raises(ValueError, match=r"1, 2, 3"):
        migrate(object(), "sqlite")  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_messages_need_an_existing_room(database: TestDatabase) -> None:
    """Foreign keys are enforced: a message cannot point at a room that does not exist."""
    pool = database.open_pool()
    await migrate(pool)
    with pytest.raises(pool.dbapi.IntegrityError):
        await pool.runOperation(
            "INSERT INTO messages (room_id, seq, message_id, type, sender_id, text, created_at)"
            " VALUES (404, 1, 'm-1', 'TALK', 1, 'hi', '2024-01-01T00:00:00Z')"
        )


def _message_indexes(transaction: Any, dialect: str) -> list[tuple[str, bool]]:
    """The messages table's indexes as (name, unique), including the primary key's."""
    if dialect == "postgresql":
        transaction.execute(
            "SELECT c.relname, i.indisunique FROM pg_index AS i "
            "JOIN pg_class AS c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = 'messages'::regclass ORDER BY c.relname"
        )
        return [(name, bool(unique)) for name, unique in transaction.fetchall()]
    transaction.execute("PRAGMA index_list(messages)")
    # (seq, name, unique, origin, partial); origin "pk" is the WITHOUT ROWID table itself.
    return sorted((row[1], bool(row[2])) for row in transaction.fetchall() if row[3] != "pk")


@pytest_twisted.ensureDeferred
async def test_messages_are_unique_only_by_room_and_seq(database: TestDatabase) -> None:
    """The primary key (room_id, seq) is the messages table's only unique index: message_id
    (always derived from the two) has no index of its own, which no query needs."""
    pool = database.open_pool()
    await migrate(pool)
    indexes = await pool.runInteraction(_message_indexes, database.dialect)
    assert indexes == ([("messages_pkey", True)] if database.dialect == "postgresql" else [])
    insert = (
        "INSERT INTO messages (room_id, seq, message_id, type, sender_id, text, created_at) "
        "VALUES (1, {seq}, 'same-id', 'TALK', 1, 'hi', '2024-01-01T00:00:00Z')"
    )
    await pool.runOperation(
        "INSERT INTO rooms (id, name, created_at) VALUES (1, 'lobby', '2024-01-01T00:00:00Z')"
    )
    await pool.runOperation(insert.format(seq=1))
    await pool.runOperation(insert.format(seq=2))
    with pytest.raises(pool.dbapi.IntegrityError):
        await pool.runOperation(insert.format(seq=2))


@pytest_twisted.ensureDeferred
async def test_dropping_the_message_id_index_upgrades_a_version_1_database(
    database: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database left at version 1 (message_id UNIQUE) is brought to the latest version with
    every message kept unchanged, the history query still on the primary key, the foreign
    key still enforced, and the store working on it."""
    pool = database.open_pool()
    version_1 = {dialect: tuple(migrations[:1]) for dialect, migrations in MIGRATIONS.items()}
    monkeypatch.setattr(schema, "MIGRATIONS", version_1)
    assert await migrate(pool) == 1
    assert len(await pool.runInteraction(_message_indexes, database.dialect)) == (
        2 if database.dialect == "postgresql" else 1
    )
    store = AdbapiChatStore(pool)
    old = [
        ChatMessage(room, seq, f"{room}-{seq}", "TALK", 7, f"old {room}/{seq} \u00e9\"'\\", T0)
        for room in (1, 2)
        for seq in range(1, 51)
    ]
    await store.save_messages(old)
    monkeypatch.undo()

    latest = latest_version(database.dialect)
    assert await migrate(pool) == latest
    assert await current_version(pool) == latest
    indexes = await pool.runInteraction(_message_indexes, database.dialect)
    assert indexes == ([("messages_pkey", True)] if database.dialect == "postgresql" else [])
    assert await pool.runInteraction(_column_names, "messages") == TABLE_COLUMNS["messages"]
    assert await store.load_messages(1, limit=100) == old[:50]
    assert await store.load_messages(2, limit=100) == old[50:]
    assert await store.last_seq(2) == 50

    new = [ChatMessage(1, seq, f"1-{seq}", "TALK", 7, "new", T0) for seq in range(45, 61)]
    await store.save_messages(new)
    await store.save_messages(new)
    assert [m.seq for m in await store.load_messages(1, limit=100)] == list(range(1, 61))
    with pytest.raises(pool.dbapi.IntegrityError):
        await pool.runOperation(
            "INSERT INTO messages (room_id, seq, message_id, type, sender_id, text, created_at)"
            " VALUES (404, 1, 'm-1', 'TALK', 1, 'hi', '2024-01-01T00:00:00Z')"
        )
    assert await migrate(pool) == latest


@pytest_twisted.ensureDeferred
async def test_history_page_query_walks_the_primary_key(database: TestDatabase) -> None:
    """Loading a page of history is an index range scan, with no sort and no table scan."""
    pool = database.open_pool()
    await migrate(pool)
    page_query = (
        "SELECT room_id, seq, text FROM messages WHERE room_id = 1 AND seq < 100 "
        "ORDER BY seq DESC LIMIT 30"
    )

    def explain(transaction: Any) -> str:
        if database.dialect == "postgresql":
            # The tables are empty, so make the planner show the plan it would use at scale.
            transaction.execute("SET LOCAL enable_seqscan = off")
            transaction.execute(f"EXPLAIN {page_query}")
        else:
            transaction.execute(f"EXPLAIN QUERY PLAN {page_query}")
        return "\n".join(str(row[-1]) for row in transaction.fetchall())

    plan = await pool.runInteraction(explain)
    if database.dialect == "postgresql":
        assert "Index Scan Backward using messages_pkey" in plan
        assert "Sort" not in plan
    else:
        assert "SEARCH messages USING PRIMARY KEY (room_id=? AND seq<?)" in plan
        assert "TEMP B-TREE" not in plan
