"""Read positions: the last ``seq`` each user has read in each room.

A position only moves forward: a tab that reports an older seq than another
tab already did changes nothing. Positions of a deleted room go with it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from stomp_chat.persistence._dialect import Dialect, dialect_of
from stomp_chat.persistence.transactions import Runner

#: Longest user id stored (principal ids are names, token subjects or session ids).
MAX_USER_ID_LENGTH = 200


class ReadPositionStore(Protocol):
    """Where read positions live."""

    def positions(self, user_id: str) -> Deferred[dict[int, int]]:
        """Every room the user has a position in, with that position."""
        ...

    def advance(self, user_id: str, room_id: int, seq: int) -> Deferred[int | None]:
        """Move a position forward to ``seq``; fires with the position now stored, or None
        when the room does not exist."""
        ...


def _check(user_id: str, seq: int) -> None:
    if not user_id or len(user_id) > MAX_USER_ID_LENGTH:
        raise ValueError(f"a user id has 1 to {MAX_USER_ID_LENGTH} characters")
    if seq < 0 or seq >= 2**63:
        raise ValueError("seq must be between 0 and 2**63 - 1")


class AdbapiReadPositionStore:
    """Read positions in the ``read_positions`` table, on SQLite or PostgreSQL; with a
    `timeout`, every call fails with DatabaseTimeout past it."""

    def __init__(
        self,
        pool: adbapi.ConnectionPool,
        dialect: str | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        *,
        timeout: float | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self._run = Runner(pool, timeout, clock)
        self._dialect: Dialect = dialect_of(pool, dialect)
        self._now = now
        greatest = "GREATEST" if self._dialect.is_postgres else "MAX"
        # INSERT ... SELECT from rooms: an unknown room inserts nothing, returns no row.
        self._advance_sql = self._dialect.sql(
            "INSERT INTO read_positions (user_id, room_id, seq, updated_at) "
            "SELECT ?, id, ?, ? FROM rooms WHERE id = ? "
            "ON CONFLICT (user_id, room_id) DO UPDATE SET "
            f"seq = {greatest}(read_positions.seq, excluded.seq), "
            "updated_at = excluded.updated_at RETURNING seq"
        )
        self._positions_sql = self._dialect.sql(
            "SELECT room_id, seq FROM read_positions WHERE user_id = ?"
        )

    def positions(self, user_id: str) -> Deferred[dict[int, int]]:
        result: Deferred[dict[int, int]] = self._run(self._positions, user_id)
        return result

    def _positions(self, transaction: Any, user_id: str) -> dict[int, int]:
        transaction.execute(self._positions_sql, (user_id,))
        return {int(room): int(seq) for room, seq in transaction.fetchall()}

    def advance(self, user_id: str, room_id: int, seq: int) -> Deferred[int | None]:
        _check(user_id, seq)
        stamp = self._dialect.time_to_db(self._now())
        result: Deferred[int | None] = self._run(self._advance, (user_id, seq, stamp, room_id))
        return result

    def _advance(self, transaction: Any, params: tuple[Any, ...]) -> int | None:
        transaction.execute(self._advance_sql, params)
        rows = transaction.fetchall()
        return int(rows[0][0]) if rows else None


class MemoryReadPositionStore:
    """Read positions in a dictionary, for tests of the layers above; the same contract."""

    def __init__(self, room_exists: Callable[[int], bool]) -> None:
        self._room_exists = room_exists
        self._positions: dict[str, dict[int, int]] = {}

    def positions(self, user_id: str) -> Deferred[dict[int, int]]:
        return succeed(dict(self._positions.get(user_id, {})))

    def advance(self, user_id: str, room_id: int, seq: int) -> Deferred[int | None]:
        _check(user_id, seq)
        if not self._room_exists(room_id):
            return succeed(None)
        rooms = self._positions.setdefault(user_id, {})
        rooms[room_id] = max(rooms.get(room_id, 0), seq)
        return succeed(rooms[room_id])
