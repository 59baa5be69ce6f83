"""Saving message batches: the write-behind writer's one call into the database.

Kept apart because it is the chat's hot write path, tuned per database (multi-row
statements on SQLite, one array-parameter statement on PostgreSQL), and because it alone
decides what a failed save means: a batch the database refuses for its content can never
be stored (MessagesRejected), a seq already holding another message is a collision
(SeqCollision), anything else may be retried, and a retry is safe.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from stomp_chat.persistence._dialect import Dialect, dialect_named, epoch_microseconds
from stomp_chat.persistence.model import ChatMessage
from stomp_chat.persistence.rooms import insert_missing_rooms
from stomp_chat.persistence.transactions import execute


class SeqCollision(Exception):
    """Another message is already stored under this message's (room_id, seq).

    Never silent: the message was not stored, so its sender must not get a receipt.
    """

    def __init__(self, message: ChatMessage) -> None:
        super().__init__(
            f"message {message.message_id} not stored: room {message.room_id} already holds "
            f"another message with seq {message.seq}"
        )
        self.message = message


class MessagesRejected(Exception):
    """The database refused the batch's content itself (not its availability).

    Retrying the same batch can never succeed, so the write-behind writer splits it to find
    and drop the offending message instead of retrying forever.
    """


#: A stored message's columns, in the order records are built from.
MESSAGE_COLUMNS = "room_id, seq, message_id, type, sender_id, text, created_at"

#: SQLite: rows per INSERT statement when saving a batch. One executemany of 200-row
#: statements binds the whole batch in a few statement executions; 200 rows x 7 values stays
#: far below SQLite's 32766-variable limit.
_MESSAGES_PER_STATEMENT = 200


@functools.cache
def _insert_messages_sql(dialect: Dialect, row_count: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * row_count)
    return dialect.sql(
        f"INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES {values} ON CONFLICT DO NOTHING"
    )


def _flatten(rows: Sequence[tuple[Any, ...]]) -> list[Any]:
    return [value for row in rows for value in row]


def _insert_sqlite(dialect: Dialect, rows: list[tuple[Any, ...]], transaction: Any) -> int:
    """Insert a batch, skipping rows already stored; returns how many were inserted."""
    size = _MESSAGES_PER_STATEMENT
    full_chunks, remainder = divmod(len(rows), size)
    inserted = 0
    if full_chunks:
        transaction.executemany(
            _insert_messages_sql(dialect, size),
            [_flatten(rows[start : start + size]) for start in range(0, full_chunks * size, size)],
        )
        inserted += transaction.rowcount
    if remainder:
        transaction.execute(
            _insert_messages_sql(dialect, remainder), _flatten(rows[full_chunks * size :])
        )
        inserted += transaction.rowcount
    return int(inserted)


#: PostgreSQL: a whole batch is ONE statement with one array parameter per column, sent as
#: array literals built here: psycopg2 then quotes seven strings instead of adapting seven
#: values per message (its per-value adaptation, datetimes above all, was most of the
#: client's time, and adapting Python lists is no cheaper: it adapts every element). Times
#: travel as exact epoch microseconds, cheaper on both sides than timestamp text; splitting
#: off whole seconds keeps the interval arithmetic exact for every year a datetime can hold.
#: unnest zips the arrays in order, so rows are inserted in the batch's (arrival) order.
_POSTGRES_INSERT_MESSAGES = dialect_named("postgresql").sql(
    f"INSERT INTO messages ({MESSAGE_COLUMNS}) "
    "SELECT room_id, seq, message_id, type, sender_id, text, "
    "timestamptz 'epoch' + (us / 1000000) * interval '1 second' "
    "+ (us - us / 1000000 * 1000000) * interval '1 microsecond' "
    "FROM unnest(?::bigint[], ?::bigint[], ?::text[], ?::text[], ?::bigint[], ?::text[], "
    "?::bigint[]) AS batch (room_id, seq, message_id, type, sender_id, text, us)"
)

#: Idempotent: messages already stored (by room_id and seq) are skipped.
_POSTGRES_INSERT_MESSAGES_SKIPPING_STORED = _POSTGRES_INSERT_MESSAGES + " ON CONFLICT DO NOTHING"

#: The common case, a batch none of which is stored yet, as a plain INSERT: ON CONFLICT's
#: speculative insertion costs PostgreSQL a lock and an extra WAL record per row, about a
#: fifth of its time per message. The savepoint (sent in the same round trip) lets a batch
#: that does meet a stored row fall back to the skipping INSERT in the same transaction.
_POSTGRES_INSERT_NEW_MESSAGES = (
    f"SAVEPOINT new_messages; {_POSTGRES_INSERT_MESSAGES}; RELEASE SAVEPOINT new_messages"
)

_POSTGRES_UNIQUE_VIOLATION = "23505"


def _int_array(values: Iterable[Any]) -> str:
    """A PostgreSQL array literal of integers; int() refuses what is not a number."""
    return "{" + ",".join(map(str, map(int, values))) + "}"


def _quoted_array_element(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text_array(values: Sequence[str]) -> str:
    """A PostgreSQL array literal of strings, every element double-quoted, so empty strings,
    "NULL", braces, commas and surrounding spaces all stay literal text.

    A NUL raises ValueError, as psycopg2 does for one string: PostgreSQL text cannot hold it.
    """
    joined = "".join(values)  # TypeError for a non-string, before anything is sent
    if "\x00" in joined:
        raise ValueError("A string literal cannot contain NUL (0x00) characters.")
    if "\\" in joined or '"' in joined:
        return "{" + ",".join(map(_quoted_array_element, values)) + "}"
    return '{"' + '","'.join(values) + '"}'


def _converted_times(
    messages: Sequence[ChatMessage], convert: Callable[[datetime], Any]
) -> list[Any]:
    """Every message's created_at through `convert`, converting each distinct time once (the
    chat stamps all the messages of one millisecond with one time)."""
    times = [m.created_at for m in messages]
    converted = {moment: convert(moment) for moment in set(times)}
    return [converted[moment] for moment in times]


def _postgres_message_arrays(messages: Sequence[ChatMessage]) -> tuple[str, ...]:
    """The parameters of `_POSTGRES_INSERT_MESSAGES`, one array literal per column."""
    return (
        _int_array([m.room_id for m in messages]),
        _int_array([m.seq for m in messages]),
        _text_array([m.message_id for m in messages]),
        _text_array([m.type for m in messages]),
        _int_array([m.sender_id for m in messages]),
        _text_array([m.text for m in messages]),
        _int_array(_converted_times(messages, epoch_microseconds)),
    )


def _insert_postgres(
    arrays: tuple[str, ...], count: int, maybe_stored: bool, transaction: Any
) -> int:
    """Insert a batch, skipping messages already stored; returns how many were inserted.
    `maybe_stored` (after a failed attempt, which may have committed) goes straight to the
    skipping INSERT."""
    if not maybe_stored:
        try:
            transaction.execute(_POSTGRES_INSERT_NEW_MESSAGES, arrays)
            return count  # a plain INSERT stores every row or fails
        except Exception as error:
            if getattr(error, "pgcode", None) != _POSTGRES_UNIQUE_VIOLATION:
                raise
        transaction.execute("ROLLBACK TO SAVEPOINT new_messages")
    transaction.execute(_POSTGRES_INSERT_MESSAGES_SKIPPING_STORED, arrays)
    return int(transaction.rowcount)


# -- in the pool's threads --------------------------------------------------------------------


def _save_batch(
    transaction: Any,
    dialect: Dialect,
    insert: Callable[[Any], int],
    room_ids: list[int],
    created_at: Any,
    messages: Sequence[ChatMessage],
) -> list[ChatMessage]:
    # Create missing rooms in the same transaction, so a batch never fails on the foreign
    # key (one multi-row statement: a single round trip however many rooms).
    insert_missing_rooms(transaction, dialect, room_ids, created_at)
    if insert(transaction) == len(messages):
        return []
    return _collisions(transaction, dialect, messages)


def _collisions(
    transaction: Any, dialect: Dialect, messages: Sequence[ChatMessage]
) -> list[ChatMessage]:
    """The messages of a batch whose (room_id, seq) holds a different message.

    Only runs when some rows were skipped: a retried batch finds its own rows (the
    same content, no collision); another message under the same seq is one.
    """
    by_room: dict[int, list[ChatMessage]] = {}
    for message in messages:
        by_room.setdefault(message.room_id, []).append(message)
    stored: dict[tuple[int, int], tuple[Any, ...]] = {}
    for room_id, room_messages in by_room.items():
        seqs = [m.seq for m in room_messages]
        execute(
            transaction,
            dialect,
            "SELECT seq, message_id, type, sender_id, text, created_at FROM messages "
            "WHERE room_id = ? AND seq BETWEEN ? AND ?",
            (room_id, min(seqs), max(seqs)),
        )
        for seq, *content in transaction.fetchall():
            stored[(room_id, int(seq))] = (
                content[0], content[1], int(content[2]), content[3],
                dialect.time_from_db(content[4]),
            )
    return [
        m for m in messages
        if stored.get((m.room_id, m.seq))
        != (m.message_id, m.type, m.sender_id, m.text, m.created_at)
    ]


# -- in the reactor thread --------------------------------------------------------------------


class MessageBatchSaver:
    """Saves batches through `run` (the store's runInteraction, within its timeout) and
    sorts their failures into "never storable" and "not right now"."""

    def __init__(
        self,
        run: Callable[..., Deferred[Any]],
        dialect: Dialect,
        dbapi: Any,
        now: Callable[[], datetime],
    ) -> None:
        self._run = run
        self._dialect = dialect
        self._now = now
        # Errors that mean "this data can never be stored", as opposed to "not right now".
        self._rejection_errors: tuple[type[BaseException], ...] = (
            dbapi.DataError,
            dbapi.IntegrityError,
            ValueError,  # psycopg2 refuses NUL characters in text client-side
            OverflowError,  # sqlite3 refuses integers beyond 64 bits client-side
        )
        #: Whether the next batch may meet messages already stored: after a failed save,
        #: whose commit may have happened, it is most likely that batch again. Only a hint
        #: for PostgreSQL to skip the plain INSERT that would collide (and have the server
        #: log the error): the fallback keeps saving idempotent without it.
        self._maybe_stored = False

    def save(self, messages: Sequence[ChatMessage]) -> Deferred[list[ChatMessage]]:
        """`ChatStore.save_messages`."""
        if not messages:
            return succeed([])
        insert: Callable[[Any], int]
        try:
            if self._dialect.is_postgres:
                arrays = _postgres_message_arrays(messages)
                insert = functools.partial(
                    _insert_postgres, arrays, len(messages), self._maybe_stored
                )
            else:
                times = _converted_times(messages, self._dialect.time_to_db)
                rows = [
                    (m.room_id, m.seq, m.message_id, m.type, m.sender_id, m.text, time)
                    for m, time in zip(messages, times, strict=True)
                ]
                insert = functools.partial(_insert_sqlite, self._dialect, rows)
        except (ValueError, TypeError) as error:
            # What no database could store (a NUL on PostgreSQL, a naive time, text that is
            # not a string) is refused before it is sent, like the database's own refusals.
            return fail(MessagesRejected(f"{type(error).__name__}: {error}"))
        room_ids = list(dict.fromkeys(m.room_id for m in messages))
        created_at = self._dialect.time_to_db(self._now())
        saved = self._run(_save_batch, self._dialect, insert, room_ids, created_at, messages)
        return saved.addCallbacks(self._batch_saved, self._classify_save_failure)

    def _batch_saved(self, collided: list[ChatMessage]) -> list[ChatMessage]:
        self._maybe_stored = False
        return collided

    def _classify_save_failure(self, failure: Failure) -> Failure:
        if failure.check(*self._rejection_errors):
            rejected = MessagesRejected(f"{type(failure.value).__name__}: {failure.value}")
            rejected.__cause__ = failure.value
            return Failure(rejected)
        # The outcome is unknown (the commit may have reached the database before the
        # connection broke): the retry of this batch may find its messages stored.
        self._maybe_stored = True
        return failure
