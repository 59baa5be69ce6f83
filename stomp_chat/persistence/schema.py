"""Versioned schema migrations, applied at start-up by `migrate`.

To change the schema, append a `Migration` with the next version to BOTH dialect lists
(the statements may differ, the versions must not); never edit a released migration.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from stomp_chat.persistence._dialect import Dialect, dialect_named, dialect_of
from stomp_chat.persistence.url import DatabaseConfig, DialectName, open_connection

_log = Logger()

#: Any constant works; it only has to be the same for every process migrating one database.
_POSTGRES_MIGRATION_LOCK_KEY = 0x5C4A7_0001


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer release than this one; refuse to touch it."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


_SQLITE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)"""

_POSTGRES_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)"""

#: Migration 2 on both dialects. The chat numbers each room's messages and names each
#: message f"{room_id}-{seq}", so the (room_id, seq) primary key already makes message_id
#: unique and is what makes a re-sent batch a no-op. The second unique index only cost
#: every insert an extra index entry (measured: over a quarter of PostgreSQL's server time
#: per stored message, about a quarter of SQLite's insert time), and no query looks a
#: message up by its message_id, so no plain index replaces it.
_DROP_MESSAGE_ID_UNIQUE = "messages: no unique index on message_id ((room_id, seq) implies it)"

#: The accounts ``--auth password`` checks (``stomp-chat-admin`` manages them): an Argon2id
#: hash in PHC form, and roles as a comma-separated list.
_USERS = "users: login accounts with password hashes and roles"

#: Private rooms: read and written only by their members (room_members).
_PRIVATE_ROOMS = "rooms: private flag (members only)"

#: The last seq each user has read in each room, for unread counts (user_id is the
#: principal's id, text: it may come from a token's subject).
_READ_POSITIONS = "read_positions: the last seq each user read in each room"

#: Each room's seq high-water mark. The chat hands out a seq only at or below it, and
#: writes it ahead of need, so a restart after a crash starts every room past any seq
#: that may have been broadcast.
_SEQ_RESERVATIONS = "room_seq_reservations: the highest seq each room may have handed out"

_SQLITE_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "members, rooms, room membership and messages",
        (
            """CREATE TABLE members (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                password_hash TEXT,
                created_at TEXT NOT NULL
            )""",
            """CREATE TABLE rooms (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                created_at TEXT NOT NULL
            )""",
            """CREATE TABLE room_members (
                room_id INTEGER NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
                member_id INTEGER NOT NULL REFERENCES members (id) ON DELETE CASCADE,
                joined_at TEXT NOT NULL,
                PRIMARY KEY (room_id, member_id)
            ) WITHOUT ROWID""",
            "CREATE INDEX room_members_by_member ON room_members (member_id)",
            # WITHOUT ROWID clusters rows by (room_id, seq): a history page is one range scan
            # of the primary key, which is also the index for "seq < ? ORDER BY seq DESC".
            # sender_id deliberately has no foreign key: clients name themselves when
            # authentication is off.
            """CREATE TABLE messages (
                room_id INTEGER NOT NULL REFERENCES rooms (id),
                seq INTEGER NOT NULL,
                message_id TEXT NOT NULL UNIQUE,
                type TEXT NOT NULL,
                sender_id INTEGER NOT NULL,
                text TEXT NOT NULL,
                created_at TEXT NOT NULL,
                PRIMARY KEY (room_id, seq)
            ) WITHOUT ROWID""",
        ),
    ),
    Migration(
        2,
        _DROP_MESSAGE_ID_UNIQUE,
        (
            # SQLite cannot drop a UNIQUE written into CREATE TABLE: rebuild the table without
            # it (nothing references messages, so dropping the old one is safe; the copy
            # reads and writes in primary key order).
            """CREATE TABLE messages_v2 (
                room_id INTEGER NOT NULL REFERENCES rooms (id),
                seq INTEGER NOT NULL,
                message_id TEXT NOT NULL,
                type TEXT NOT NULL,
                sender_id INTEGER NOT NULL,
                text TEXT NOT NULL,
                created_at TEXT NOT NULL,
                PRIMARY KEY (room_id, seq)
            ) WITHOUT ROWID""",
            "INSERT INTO messages_v2 (room_id, seq, message_id, type, sender_id, text, created_at)"
            " SELECT room_id, seq, message_id, type, sender_id, text, created_at FROM messages",
            "DROP TABLE messages",
            "ALTER TABLE messages_v2 RENAME TO messages",
        ),
    ),
    Migration(
        3,
        _USERS,
        (
            """CREATE TABLE users (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                password_hash TEXT NOT NULL,
                roles TEXT NOT NULL DEFAULT '',
                created_at TEXT NOT NULL
            )""",
        ),
    ),
    Migration(
        4,
        _PRIVATE_ROOMS,
        ("ALTER TABLE rooms ADD COLUMN private BOOLEAN NOT NULL DEFAULT 0",),
    ),
    Migration(
        5,
        _READ_POSITIONS,
        (
            """CREATE TABLE read_positions (
                user_id TEXT NOT NULL,
                room_id INTEGER NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
                seq INTEGER NOT NULL,
                updated_at TEXT NOT NULL,
                PRIMARY KEY (user_id, room_id)
            ) WITHOUT ROWID""",
            "CREATE INDEX read_positions_by_room ON read_positions (room_id)",
        ),
    ),
    Migration(
        6,
        _SEQ_RESERVATIONS,
        (
            """CREATE TABLE room_seq_reservations (
                room_id INTEGER PRIMARY KEY,
                reserved_through INTEGER NOT NULL
            )""",
        ),
    ),
)

_POSTGRES_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "members, rooms, room membership and messages",
        (
            # BY DEFAULT (not ALWAYS) so a room or member can be created with an explicit id;
            # the store then moves the sequence past it.
            """CREATE TABLE members (
                id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                password_hash TEXT,
                created_at TIMESTAMPTZ NOT NULL
            )""",
            """CREATE TABLE rooms (
                id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                name TEXT NOT NULL,
                created_at TIMESTAMPTZ NOT NULL
            )""",
            """CREATE TABLE room_members (
                room_id BIGINT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
                member_id BIGINT NOT NULL REFERENCES members (id) ON DELETE CASCADE,
                joined_at TIMESTAMPTZ NOT NULL,
                PRIMARY KEY (room_id, member_id)
            )""",
            "CREATE INDEX room_members_by_member ON room_members (member_id)",
            # The primary key's btree on (room_id, seq) serves "seq < ? ORDER BY seq DESC
            # LIMIT ?" with a backward index scan; no second index is needed.
            """CREATE TABLE messages (
                room_id BIGINT NOT NULL REFERENCES rooms (id),
                seq BIGINT NOT NULL,
                message_id TEXT NOT NULL UNIQUE,
                type TEXT NOT NULL,
                sender_id BIGINT NOT NULL,
                text TEXT NOT NULL,
                created_at TIMESTAMPTZ NOT NULL,
                PRIMARY KEY (room_id, seq)
            )""",
        ),
    ),
    Migration(
        2,
        _DROP_MESSAGE_ID_UNIQUE,
        # The name PostgreSQL gave the UNIQUE of migration 1; dropping it is instant.
        ("ALTER TABLE messages DROP CONSTRAINT messages_message_id_key",),
    ),
    Migration(
        3,
        _USERS,
        (
            """CREATE TABLE users (
                id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                password_hash TEXT NOT NULL,
                roles TEXT NOT NULL DEFAULT '',
                created_at TIMESTAMPTZ NOT NULL
            )""",
        ),
    ),
    Migration(
        4,
        _PRIVATE_ROOMS,
        ("ALTER TABLE rooms ADD COLUMN private BOOLEAN NOT NULL DEFAULT FALSE",),
    ),
    Migration(
        5,
        _READ_POSITIONS,
        (
            """CREATE TABLE read_positions (
                user_id TEXT NOT NULL,
                room_id BIGINT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
                seq BIGINT NOT NULL,
                updated_at TIMESTAMPTZ NOT NULL,
                PRIMARY KEY (user_id, room_id)
            )""",
            "CREATE INDEX read_positions_by_room ON read_positions (room_id)",
        ),
    ),
    Migration(
        6,
        _SEQ_RESERVATIONS,
        (
            """CREATE TABLE room_seq_reservations (
                room_id BIGINT PRIMARY KEY,
                reserved_through BIGINT NOT NULL
            )""",
        ),
    ),
)

MIGRATIONS: Mapping[DialectName, Sequence[Migration]] = {
    "sqlite": _SQLITE_MIGRATIONS,
    "postgresql": _POSTGRES_MIGRATIONS,
}


def latest_version(dialect: str) -> int:
    """The version `migrate` brings a database of this dialect to."""
    migrations = MIGRATIONS[dialect_named(dialect).name]
    return migrations[-1].version if migrations else 0


def migrate(pool: adbapi.ConnectionPool, dialect: str | None = None) -> Deferred[int]:
    """Bring the schema up to date in one transaction; fires with the version reached.

    Idempotent, and safe when several processes start at once (SQLite: BEGIN IMMEDIATE;
    PostgreSQL: a transaction-scoped advisory lock).
    """
    resolved = dialect_of(pool, dialect)
    migrations = MIGRATIONS[resolved.name]
    _check_versions(migrations)
    applied: Deferred[tuple[int, int]] = pool.runInteraction(
        _migrate_in_transaction, resolved, migrations
    )
    return applied.addCallback(_report_migration, migrations)


def migrate_blocking(config: DatabaseConfig) -> int:
    """Migrate over a plain connection, before the reactor runs.

    The composition root calls this so that an unusable database stops the
    server at start-up with a non-zero exit, as a daemon manager expects.
    """
    resolved = dialect_named(config.dialect)
    migrations = MIGRATIONS[resolved.name]
    _check_versions(migrations)
    connection = open_connection(config)
    try:
        cursor = connection.cursor()
        previous, reached = _migrate_in_transaction(cursor, resolved, migrations)
        connection.commit()
    finally:
        connection.close()
    return _report_migration((previous, reached), migrations)


def _report_migration(versions: tuple[int, int], migrations: Sequence[Migration]) -> int:
    previous, reached = versions
    for migration in migrations:
        if previous < migration.version <= reached:
            _log.info(
                "Applied schema migration {version}: {description}",
                version=migration.version,
                description=migration.description,
            )
    return reached


def current_version(pool: adbapi.ConnectionPool, dialect: str | None = None) -> Deferred[int]:
    """The schema version recorded in the database (0 if never migrated)."""
    resolved = dialect_of(pool, dialect)
    version: Deferred[int] = pool.runInteraction(_read_version, resolved)
    return version


def _check_versions(migrations: Sequence[Migration]) -> None:
    versions = [migration.version for migration in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migration versions must be 1, 2, 3... in order, got {versions}")


def _read_version(transaction: Any, dialect: Dialect) -> int:
    table_query = (
        "SELECT 1 FROM information_schema.tables "
        "WHERE table_name = 'schema_version' AND table_schema = current_schema()"
        if dialect.is_postgres
        else "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    )
    transaction.execute(table_query)
    if transaction.fetchone() is None:
        return 0
    transaction.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
    return int(transaction.fetchone()[0])


def _migrate_in_transaction(
    transaction: Any, dialect: Dialect, migrations: Sequence[Migration]
) -> tuple[int, int]:
    """Runs in a pool thread, so it only touches the database (no logging)."""
    if dialect.is_postgres:
        transaction.execute(
            dialect.sql("SELECT pg_advisory_xact_lock(?)"), (_POSTGRES_MIGRATION_LOCK_KEY,)
        )
        transaction.execute(_POSTGRES_VERSION_TABLE)
    else:
        # Python's sqlite3 runs DDL outside any transaction unless one is opened explicitly;
        # IMMEDIATE also takes the write lock up front, serialising concurrent migrators.
        transaction.execute("BEGIN IMMEDIATE")
        transaction.execute(_SQLITE_VERSION_TABLE)
    transaction.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version")
    current = int(transaction.fetchone()[0])
    latest = migrations[-1].version if migrations else 0
    if current > latest:
        raise SchemaTooNew(
            f"database schema is at version {current}, newer than this release knows "
            f"({latest}); upgrade stomp-chat"
        )
    record = dialect.sql("INSERT INTO schema_version (version, description) VALUES (?, ?)")
    for migration in migrations:
        if migration.version <= current:
            continue
        for statement in migration.statements:
            transaction.execute(statement)
        transaction.execute(record, (migration.version, migration.description))
    return current, latest
