"""Running transaction functions: on the pool within a deadline, and in the pool's threads
with the dialect's SQL.

Every table module of the store writes its SQL once, with ``?`` placeholders, as functions
of a transaction; this is the plumbing they share, kept apart so each of them holds only
what its tables mean. The other stores on the server's pool (users, room access, read
positions) run their calls through the same `Runner`. The deadline exists because a
database host that drops packets never answers: without one a call would wait forever.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from stomp_chat.persistence._dialect import Dialect
from stomp_chat.persistence.url import ChatConnectionPool, as_database_timeout


def run_interaction(
    pool: adbapi.ConnectionPool,
    timeout: float | None,
    clock: IReactorTime | None,
    interaction: Callable[..., Any],
    *args: Any,
) -> Deferred[Any]:
    """`interaction` in a pool thread; with a timeout, failing with DatabaseTimeout past it
    (a `ChatConnectionPool` also severs the connection the late call holds)."""
    if timeout is not None and clock is not None:
        if isinstance(pool, ChatConnectionPool):
            return pool.run_within(timeout, clock, interaction, *args)
        bounded: Deferred[Any] = pool.runInteraction(interaction, *args)
        bounded.addTimeout(timeout, clock, onTimeoutCancel=as_database_timeout)
        return bounded
    result: Deferred[Any] = pool.runInteraction(interaction, *args)
    return result


class Runner:
    """`run_interaction` on one pool with one deadline, for every call of a store:
    ``run(interaction, *args)``. Without a timeout a call waits as long as the database
    takes (tests and tools); the server always gives ``--db-timeout``."""

    __slots__ = ("clock", "pool", "timeout")

    def __init__(
        self,
        pool: adbapi.ConnectionPool,
        timeout: float | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        if timeout is not None and (timeout <= 0 or clock is None):
            raise ValueError("a database timeout must be positive and needs a clock")
        self.pool = pool
        self.timeout = timeout
        self.clock = clock

    def __call__(self, interaction: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return run_interaction(self.pool, self.timeout, self.clock, interaction, *args)


# -- in the pool's threads: they only use their arguments and the immutable dialect -----------


def execute(transaction: Any, dialect: Dialect, query: str, params: Sequence[Any] = ()) -> None:
    transaction.execute(dialect.sql(query), tuple(params))


def fetch_one(transaction: Any, dialect: Dialect, query: str, params: Sequence[Any]) -> Any:
    execute(transaction, dialect, query, params)
    rows = transaction.fetchall()
    return rows[0] if rows else None


def insert_with_new_id(
    transaction: Any,
    dialect: Dialect,
    query: str,
    params: Sequence[Any],
    explain_conflict: Callable[[], None] | None = None,
) -> int:
    """Insert a row whose id the database picks; `query` must end in RETURNING id.

    On PostgreSQL the sequence may hand out an id that was inserted explicitly (a room
    created from a client's roomId): ON CONFLICT DO NOTHING returns no row and the next
    attempt draws the next id, so ids never collide. `explain_conflict` raises when the
    conflict is on another unique column (a member's name), which retrying cannot fix.
    """
    while True:
        execute(transaction, dialect, query, params)
        rows = transaction.fetchall()
        if rows:
            return int(rows[0][0])
        if explain_conflict is not None:
            explain_conflict()


def advance_id_sequence(transaction: Any, dialect: Dialect, table: str) -> None:
    """Move PostgreSQL's id sequence past explicitly inserted ids (a hint for speed only:
    `insert_with_new_id` stays correct if a concurrent transaction moves it back)."""
    if dialect.is_postgres:
        transaction.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
            f"(SELECT MAX(id) FROM {table}))"
        )
