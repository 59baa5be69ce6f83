"""The chat's storage interface, its adbapi implementation and an in-memory twin for tests."""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from stomp_chat.persistence import members, membership, rooms
from stomp_chat.persistence._dialect import (
    Dialect,
    dialect_named,
    dialect_of,
    epoch_microseconds,
)
from stomp_chat.persistence.members import (
    MemberNameTaken,
    MemberNotFound,
    check_member_name,
    member_name_candidates,
)
from stomp_chat.persistence.model import ChatMessage, Member, Room
from stomp_chat.persistence.rooms import RoomAlreadyExists, RoomNotFound, default_room_name
from stomp_chat.persistence.transactions import (
    execute,
    fetch_one,
    run_interaction,
)


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


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _check_history_arguments(limit: int) -> None:
    if limit < 0:
        raise ValueError(f"history limit must not be negative, got {limit}")


class ChatStore(Protocol):
    """Storage used by the chat; every method returns a Deferred."""

    def create_room(self, name: str, room_id: int | None = None) -> Deferred[Room]:
        """Create a room; with an explicit id, fail with RoomAlreadyExists if it is taken."""
        ...

    def get_room(self, room_id: int) -> Deferred[Room | None]: ...

    def list_rooms(self) -> Deferred[list[Room]]:
        """All rooms, by id."""
        ...

    def ensure_room(self, room_id: int) -> Deferred[Room]:
        """The room with this id, created if missing (concurrent callers get the same room)."""
        ...

    def create_member(self, name: str, password_hash: str | None = None) -> Deferred[Member]:
        """Create a member; fails with MemberNameTaken if the name is in use."""
        ...

    def get_member(self, member_id: int) -> Deferred[Member | None]: ...

    def get_member_by_name(self, name: str) -> Deferred[Member | None]: ...

    def get_member_credentials(self, name: str) -> Deferred[tuple[Member, str | None] | None]:
        """The member and its password hash, for authenticating a CONNECT."""
        ...

    def ensure_member(self, member_id: int) -> Deferred[Member]:
        """The member with this id, created (named after the id) if missing."""
        ...

    def join_room(self, room_id: int, member_id: int) -> Deferred[bool]:
        """Add a member to a room; True if newly joined, False if already a member."""
        ...

    def leave_room(self, room_id: int, member_id: int) -> Deferred[bool]:
        """Remove a member from a room; True if it was a member."""
        ...

    def list_members(self, room_id: int) -> Deferred[list[Member]]:
        """A room's members in the order they joined."""
        ...

    def last_seq(self, room_id: int) -> Deferred[int]:
        """The highest stored seq of a room, 0 if it has no messages."""
        ...

    def delete_messages_before(self, cutoff: datetime, limit: int) -> Deferred[int]:
        """Delete at most ``limit`` messages created before ``cutoff``; how many went.

        A room's newest message always stays: the next message's seq counts from it.
        """
        ...

    def delete_message(self, room_id: int, seq: int) -> Deferred[bool]:
        """Remove one stored message; True if it was there.

        The room's seq reservation is raised to at least ``seq`` in the same
        transaction, so a removed newest message never has its seq handed out again.
        """
        ...

    def save_messages(self, messages: Sequence[ChatMessage]) -> Deferred[list[ChatMessage]]:
        """Store a batch atomically; messages already stored are skipped, so retries are safe.

        A message is identified by (room_id, seq): its message_id is not checked for
        uniqueness (the chat derives it from those two). Rooms the messages name are created
        if missing. Fires with the messages NOT stored because a different message already
        holds their (room_id, seq) (a seq collision), in batch order; normally none.
        """
        ...

    def reserve_seqs(self, room_id: int, count: int) -> Deferred[tuple[int, int, int]]:
        """Reserve `count` seqs past everything stored or reserved for a room, durably.

        Fires with (highest stored seq, reservation before, reservation now).
        """
        ...

    def extend_seq_reservation(self, room_id: int, through: int) -> Deferred[int]:
        """Raise a room's reservation to at least `through`; fires with the reservation."""
        ...

    def release_seq_reservation(
        self, room_id: int, reserved_through: int, last_seq: int
    ) -> Deferred[bool]:
        """Lower a room's reservation from `reserved_through` to `last_seq`, unless it moved
        meanwhile (then nothing changes); True if lowered."""
        ...

    def seq_floor(self, room_id: int) -> Deferred[int]:
        """The highest seq of a room stored or reserved, 0 if none."""
        ...

    def load_messages(
        self,
        room_id: int,
        limit: int,
        before_seq: int | None = None,
        after_seq: int | None = None,
    ) -> Deferred[list[ChatMessage]]:
        """Up to `limit` messages, ascending by seq.

        Only `before_seq`: the newest below it (scrolling back). Only `after_seq`: the oldest
        above it (catching up). Both: the oldest strictly between them. Neither: the newest.
        """
        ...

    def close(self) -> Deferred[None]: ...


_MESSAGE_COLUMNS = "room_id, seq, message_id, type, sender_id, text, created_at"

#: SQLite: rows per INSERT statement when saving a batch. One executemany of 200-row
#: statements binds the whole batch in a few statement executions; 200 rows x 7 values stays
#: far below SQLite's 32766-variable limit.
_MESSAGES_PER_STATEMENT = 200


@functools.cache
def _insert_messages_sql(dialect: Dialect, row_count: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * row_count)
    return dialect.sql(
        f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES {values} ON CONFLICT DO NOTHING"
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
    f"INSERT INTO messages ({_MESSAGE_COLUMNS}) "
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


def delete_old_messages(transaction: Any, dialect: Dialect, cutoff: Any, limit: int) -> int:
    """Delete at most ``limit`` messages created before ``cutoff`` (already in the database's
    time format), keeping each room's newest; how many went. Shared by the retention job and
    ``stomp-chat-admin messages purge``."""
    transaction.execute(
        dialect.sql(
            "DELETE FROM messages WHERE (room_id, seq) IN ("
            " SELECT m.room_id, m.seq FROM messages m WHERE m.created_at < ?"
            " AND m.seq < (SELECT MAX(n.seq) FROM messages n WHERE n.room_id = m.room_id)"
            " LIMIT ?)"
        ),
        (cutoff, int(limit)),
    )
    return int(transaction.rowcount)


class AdbapiChatStore:
    """`ChatStore` on an adbapi pool; the same SQL runs on SQLite and PostgreSQL.

    Transaction functions run in the pool's threads: they only use their arguments and the
    immutable dialect, never the reactor.
    """

    def __init__(
        self,
        pool: adbapi.ConnectionPool,
        dialect: str | None = None,
        now: Callable[[], datetime] = _utc_now,
        *,
        timeout: float | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        if timeout is not None and (timeout <= 0 or clock is None):
            raise ValueError("a database timeout must be positive and needs a clock")
        self._pool = pool
        #: Every call fails with DatabaseTimeout after this many seconds, whatever the
        #: database does (a host that drops packets answers nothing, ever).
        self._timeout = timeout
        self._clock = clock
        self._dialect: Dialect = dialect_of(pool, dialect)
        self._now = now
        # Errors that mean "this data can never be stored", as opposed to "not right now".
        self._rejection_errors: tuple[type[BaseException], ...] = (
            pool.dbapi.DataError,
            pool.dbapi.IntegrityError,
            ValueError,  # psycopg2 refuses NUL characters in text client-side
            OverflowError,  # sqlite3 refuses integers beyond 64 bits client-side
        )
        #: Whether the next batch may meet messages already stored: after a failed save,
        #: whose commit may have happened, it is most likely that batch again. Only a hint
        #: for PostgreSQL to skip the plain INSERT that would collide (and have the server
        #: log the error): the fallback keeps saving idempotent without it.
        self._maybe_stored = False

    @property
    def pool(self) -> adbapi.ConnectionPool:
        return self._pool

    def _run(self, interaction: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return run_interaction(self._pool, self._timeout, self._clock, interaction, *args)

    # -- rows to records (called in pool threads) ------------------------------------------

    def _message(self, row: Sequence[Any]) -> ChatMessage:
        return ChatMessage(
            room_id=int(row[0]),
            seq=int(row[1]),
            message_id=row[2],
            type=row[3],
            sender_id=int(row[4]),
            text=row[5],
            created_at=self._dialect.time_from_db(row[6]),
        )

    # -- rooms ---------------------------------------------------------------------------

    def create_room(self, name: str, room_id: int | None = None) -> Deferred[Room]:
        return self._run(rooms.create_room, self._dialect, name, room_id, self._now())

    def get_room(self, room_id: int) -> Deferred[Room | None]:
        return self._run(rooms.get_room, self._dialect, room_id)

    def list_rooms(self) -> Deferred[list[Room]]:
        return self._run(rooms.list_rooms, self._dialect)

    def ensure_room(self, room_id: int) -> Deferred[Room]:
        return self._run(rooms.ensure_room, self._dialect, room_id, self._now())

    # -- members -------------------------------------------------------------------------

    def create_member(self, name: str, password_hash: str | None = None) -> Deferred[Member]:
        members.check_member_name(name)
        return self._run(members.create_member, self._dialect, name, password_hash, self._now())

    def get_member(self, member_id: int) -> Deferred[Member | None]:
        return self._run(members.get_member, self._dialect, member_id)

    def get_member_by_name(self, name: str) -> Deferred[Member | None]:
        return self._run(members.get_member_by_name, self._dialect, name)

    def get_member_credentials(self, name: str) -> Deferred[tuple[Member, str | None] | None]:
        return self._run(members.get_member_credentials, self._dialect, name)

    def ensure_member(self, member_id: int) -> Deferred[Member]:
        return self._run(members.ensure_member, self._dialect, member_id, self._now())

    # -- membership ----------------------------------------------------------------------

    def join_room(self, room_id: int, member_id: int) -> Deferred[bool]:
        return self._run(membership.join_room, self._dialect, room_id, member_id, self._now())

    def leave_room(self, room_id: int, member_id: int) -> Deferred[bool]:
        return self._run(membership.leave_room, self._dialect, room_id, member_id)

    def list_members(self, room_id: int) -> Deferred[list[Member]]:
        return self._run(membership.list_members, self._dialect, room_id)

    # -- messages ------------------------------------------------------------------------

    def last_seq(self, room_id: int) -> Deferred[int]:
        return self._run(self._last_seq, room_id)

    def delete_messages_before(self, cutoff: datetime, limit: int) -> Deferred[int]:
        return self._run(
            self._delete_messages_before, self._dialect.time_to_db(cutoff), int(limit)
        )

    def _delete_messages_before(self, transaction: Any, cutoff: Any, limit: int) -> int:
        return delete_old_messages(transaction, self._dialect, cutoff, limit)

    def delete_message(self, room_id: int, seq: int) -> Deferred[bool]:
        return self._run(self._delete_message, room_id, seq)

    def _delete_message(self, transaction: Any, room_id: int, seq: int) -> bool:
        execute(
            transaction,
            self._dialect,
            "DELETE FROM messages WHERE room_id = ? AND seq = ?",
            (room_id, seq),
        )
        deleted = transaction.rowcount > 0
        if deleted:
            self._raise_reservation(transaction, room_id, seq)
        return bool(deleted)

    def _last_seq(self, transaction: Any, room_id: int) -> int:
        row = fetch_one(
            transaction,
            self._dialect,
            "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE room_id = ?",
            (room_id,),
        )
        return int(row[0])

    def save_messages(self, messages: Sequence[ChatMessage]) -> Deferred[list[ChatMessage]]:
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
        saved = self._run(self._save_messages, insert, room_ids, created_at, messages)
        return saved.addCallbacks(self._batch_saved, self._classify_save_failure)

    def _batch_saved(self, collided: list[ChatMessage]) -> list[ChatMessage]:
        self._maybe_stored = False
        return collided

    def _save_messages(
        self,
        transaction: Any,
        insert: Callable[[Any], int],
        room_ids: list[int],
        created_at: Any,
        messages: Sequence[ChatMessage],
    ) -> list[ChatMessage]:
        # Create missing rooms in the same transaction, so a batch never fails on the foreign
        # key (one multi-row statement: a single round trip however many rooms).
        rooms.insert_missing_rooms(transaction, self._dialect, room_ids, created_at)
        if insert(transaction) == len(messages):
            return []
        return self._collisions(transaction, messages)

    def _collisions(self, transaction: Any, messages: Sequence[ChatMessage]) -> list[ChatMessage]:
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
                self._dialect,
                "SELECT seq, message_id, type, sender_id, text, created_at FROM messages "
                "WHERE room_id = ? AND seq BETWEEN ? AND ?",
                (room_id, min(seqs), max(seqs)),
            )
            for seq, *content in transaction.fetchall():
                stored[(room_id, int(seq))] = (
                    content[0], content[1], int(content[2]), content[3],
                    self._dialect.time_from_db(content[4]),
                )
        return [
            m for m in messages
            if stored.get((m.room_id, m.seq))
            != (m.message_id, m.type, m.sender_id, m.text, m.created_at)
        ]

    # -- seq reservations ----------------------------------------------------------------

    def reserve_seqs(self, room_id: int, count: int) -> Deferred[tuple[int, int, int]]:
        if count < 1:
            raise ValueError(f"reserve at least one seq, not {count}")
        return self._run(self._reserve_seqs, room_id, count)

    def _reserve_seqs(self, transaction: Any, room_id: int, count: int) -> tuple[int, int, int]:
        stored = self._last_seq(transaction, room_id)
        before = self._reserved_through(transaction, room_id)
        through = self._raise_reservation(transaction, room_id, max(stored, before) + count)
        return stored, before, through

    def _reserved_through(self, transaction: Any, room_id: int) -> int:
        row = fetch_one(
            transaction,
            self._dialect,
            "SELECT reserved_through FROM room_seq_reservations WHERE room_id = ?",
            (room_id,),
        )
        return 0 if row is None else int(row[0])

    def _raise_reservation(self, transaction: Any, room_id: int, through: int) -> int:
        execute(
            transaction,
            self._dialect,
            "INSERT INTO room_seq_reservations (room_id, reserved_through) VALUES (?, ?) "
            "ON CONFLICT (room_id) DO UPDATE SET reserved_through = CASE "
            "WHEN excluded.reserved_through > room_seq_reservations.reserved_through "
            "THEN excluded.reserved_through "
            "ELSE room_seq_reservations.reserved_through END "
            "RETURNING reserved_through",
            (room_id, through),
        )
        return int(transaction.fetchall()[0][0])

    def extend_seq_reservation(self, room_id: int, through: int) -> Deferred[int]:
        return self._run(self._raise_reservation, room_id, through)

    def release_seq_reservation(
        self, room_id: int, reserved_through: int, last_seq: int
    ) -> Deferred[bool]:
        return self._run(self._release_reservation, room_id, reserved_through, last_seq)

    def _release_reservation(
        self, transaction: Any, room_id: int, reserved_through: int, last_seq: int
    ) -> bool:
        execute(
            transaction,
            self._dialect,
            "UPDATE room_seq_reservations SET reserved_through = ? "
            "WHERE room_id = ? AND reserved_through = ?",
            (last_seq, room_id, reserved_through),
        )
        return bool(transaction.rowcount > 0)

    def seq_floor(self, room_id: int) -> Deferred[int]:
        return self._run(self._seq_floor, room_id)

    def _seq_floor(self, transaction: Any, room_id: int) -> int:
        return max(
            self._last_seq(transaction, room_id), self._reserved_through(transaction, room_id)
        )

    def _classify_save_failure(self, failure: Failure) -> Failure:
        if failure.check(*self._rejection_errors):
            rejected = MessagesRejected(f"{type(failure.value).__name__}: {failure.value}")
            rejected.__cause__ = failure.value
            return Failure(rejected)
        # The outcome is unknown (the commit may have reached the database before the
        # connection broke): the retry of this batch may find its messages stored.
        self._maybe_stored = True
        return failure

    def load_messages(
        self,
        room_id: int,
        limit: int,
        before_seq: int | None = None,
        after_seq: int | None = None,
    ) -> Deferred[list[ChatMessage]]:
        _check_history_arguments(limit)
        if limit == 0:
            return succeed([])
        return self._run(self._load_messages, room_id, limit, before_seq, after_seq)

    def _load_messages(
        self,
        transaction: Any,
        room_id: int,
        limit: int,
        before_seq: int | None,
        after_seq: int | None,
    ) -> list[ChatMessage]:
        conditions = ["room_id = ?"]
        params: list[Any] = [room_id]
        if after_seq is not None:
            conditions.append("seq > ?")
            params.append(after_seq)
        if before_seq is not None:
            conditions.append("seq < ?")
            params.append(before_seq)
        # Paging forward reads the oldest rows; otherwise the newest, read backwards along
        # the (room_id, seq) primary key and flipped to ascending here.
        newest_first = after_seq is None
        order = "DESC" if newest_first else "ASC"
        params.append(limit)
        execute(
            transaction,
            self._dialect,
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE {' AND '.join(conditions)} "
            f"ORDER BY seq {order} LIMIT ?",
            params,
        )
        messages = [self._message(row) for row in transaction.fetchall()]
        if newest_first:
            messages.reverse()
        return messages

    def close(self) -> Deferred[None]:
        """Close the pool (after the write-behind writer has flushed); safe to call twice."""
        if self._pool.running:
            self._pool.close()
        return succeed(None)


class MemoryChatStore:
    """`ChatStore` in dictionaries, answering with already-fired Deferreds.

    For tests of the layers above (and a database-less demo mode); it follows the same
    contract as `AdbapiChatStore`, which the shared store tests check.
    """

    def __init__(self, now: Callable[[], datetime] = _utc_now) -> None:
        self._now = now
        self._rooms: dict[int, Room] = {}
        self._members: dict[int, Member] = {}
        self._members_by_name: dict[str, Member] = {}
        self._password_hashes: dict[int, str | None] = {}
        self._memberships: dict[int, dict[int, datetime]] = {}
        self._messages: dict[int, dict[int, ChatMessage]] = {}
        self._sorted_seqs: dict[int, list[int]] = {}
        self._reservations: dict[int, int] = {}
        #: How many times save_messages was called (tests of batching read it).
        self.save_calls = 0

    def _next_id(self, table: dict[int, Any]) -> int:
        return max(table, default=0) + 1

    def create_room(self, name: str, room_id: int | None = None) -> Deferred[Room]:
        if room_id is None:
            room_id = self._next_id(self._rooms)
        elif room_id in self._rooms:
            return fail(RoomAlreadyExists(room_id))
        room = Room(room_id, name, self._now().astimezone(UTC))
        self._rooms[room_id] = room
        return succeed(room)

    def get_room(self, room_id: int) -> Deferred[Room | None]:
        return succeed(self._rooms.get(room_id))

    def list_rooms(self) -> Deferred[list[Room]]:
        return succeed([self._rooms[room_id] for room_id in sorted(self._rooms)])

    def ensure_room(self, room_id: int) -> Deferred[Room]:
        return succeed(self._ensure_room(room_id))

    def _ensure_room(self, room_id: int) -> Room:
        room = self._rooms.get(room_id)
        if room is None:
            room = Room(room_id, default_room_name(room_id), self._now().astimezone(UTC))
            self._rooms[room_id] = room
        return room

    def _add_member(self, member: Member, password_hash: str | None) -> Member:
        self._members[member.id] = member
        self._members_by_name[member.name] = member
        self._password_hashes[member.id] = password_hash
        return member

    def create_member(self, name: str, password_hash: str | None = None) -> Deferred[Member]:
        check_member_name(name)
        if name in self._members_by_name:
            return fail(MemberNameTaken(name))
        member = Member(self._next_id(self._members), name, self._now().astimezone(UTC))
        return succeed(self._add_member(member, password_hash))

    def get_member(self, member_id: int) -> Deferred[Member | None]:
        return succeed(self._members.get(member_id))

    def get_member_by_name(self, name: str) -> Deferred[Member | None]:
        return succeed(self._members_by_name.get(name))

    def get_member_credentials(self, name: str) -> Deferred[tuple[Member, str | None] | None]:
        member = self._members_by_name.get(name)
        if member is None:
            return succeed(None)
        return succeed((member, self._password_hashes[member.id]))

    def ensure_member(self, member_id: int) -> Deferred[Member]:
        member = self._members.get(member_id)
        if member is not None:
            return succeed(member)
        name = next(n for n in member_name_candidates(member_id) if n not in self._members_by_name)
        member = Member(member_id, name, self._now().astimezone(UTC))
        return succeed(self._add_member(member, None))

    def join_room(self, room_id: int, member_id: int) -> Deferred[bool]:
        if room_id not in self._rooms:
            return fail(RoomNotFound(room_id))
        if member_id not in self._members:
            return fail(MemberNotFound(member_id))
        members = self._memberships.setdefault(room_id, {})
        if member_id in members:
            return succeed(False)
        members[member_id] = self._now()
        return succeed(True)

    def leave_room(self, room_id: int, member_id: int) -> Deferred[bool]:
        members = self._memberships.get(room_id, {})
        return succeed(members.pop(member_id, None) is not None)

    def list_members(self, room_id: int) -> Deferred[list[Member]]:
        joined = self._memberships.get(room_id, {})
        order = sorted(joined, key=lambda member_id: (joined[member_id], member_id))
        return succeed([self._members[member_id] for member_id in order])

    def last_seq(self, room_id: int) -> Deferred[int]:
        seqs = self._sorted_seqs.get(room_id)
        return succeed(seqs[-1] if seqs else 0)

    def delete_messages_before(self, cutoff: datetime, limit: int) -> Deferred[int]:
        deleted = 0
        for room_id, seqs in self._sorted_seqs.items():
            room_messages = self._messages[room_id]
            for seq in list(seqs[:-1]):
                if deleted >= limit:
                    return succeed(deleted)
                if room_messages[seq].created_at < cutoff:
                    del room_messages[seq]
                    seqs.remove(seq)
                    deleted += 1
        return succeed(deleted)

    def delete_message(self, room_id: int, seq: int) -> Deferred[bool]:
        room_messages = self._messages.get(room_id, {})
        if seq not in room_messages:
            return succeed(False)
        del room_messages[seq]
        self._sorted_seqs[room_id].remove(seq)
        self._reservations[room_id] = max(self._reservations.get(room_id, 0), seq)
        return succeed(True)

    def save_messages(self, messages: Sequence[ChatMessage]) -> Deferred[list[ChatMessage]]:
        self.save_calls += 1
        collided = []
        for message in messages:
            room_messages = self._messages.setdefault(message.room_id, {})
            stored = room_messages.get(message.seq)
            if stored is not None:
                if stored != message:
                    collided.append(message)
                continue
            self._ensure_room(message.room_id)
            room_messages[message.seq] = message
            bisect.insort(self._sorted_seqs.setdefault(message.room_id, []), message.seq)
        return succeed(collided)

    def _stored_max(self, room_id: int) -> int:
        seqs = self._sorted_seqs.get(room_id)
        return seqs[-1] if seqs else 0

    def reserve_seqs(self, room_id: int, count: int) -> Deferred[tuple[int, int, int]]:
        if count < 1:
            raise ValueError(f"reserve at least one seq, not {count}")
        stored = self._stored_max(room_id)
        before = self._reservations.get(room_id, 0)
        through = self._reservations[room_id] = max(stored, before) + count
        return succeed((stored, before, through))

    def extend_seq_reservation(self, room_id: int, through: int) -> Deferred[int]:
        reserved = self._reservations[room_id] = max(self._reservations.get(room_id, 0), through)
        return succeed(reserved)

    def release_seq_reservation(
        self, room_id: int, reserved_through: int, last_seq: int
    ) -> Deferred[bool]:
        if self._reservations.get(room_id) != reserved_through:
            return succeed(False)
        self._reservations[room_id] = last_seq
        return succeed(True)

    def seq_floor(self, room_id: int) -> Deferred[int]:
        return succeed(max(self._stored_max(room_id), self._reservations.get(room_id, 0)))

    def load_messages(
        self,
        room_id: int,
        limit: int,
        before_seq: int | None = None,
        after_seq: int | None = None,
    ) -> Deferred[list[ChatMessage]]:
        _check_history_arguments(limit)
        seqs = self._sorted_seqs.get(room_id, [])
        low = 0 if after_seq is None else bisect.bisect_right(seqs, after_seq)
        high = len(seqs) if before_seq is None else bisect.bisect_left(seqs, before_seq)
        if high <= low or limit == 0:
            return succeed([])
        if after_seq is not None:
            window = seqs[low : min(high, low + limit)]
        else:
            window = seqs[max(low, high - limit) : high]
        room_messages = self._messages[room_id]
        return succeed([room_messages[seq] for seq in window])

    def close(self) -> Deferred[None]:
        return succeed(None)
