"""Read positions on SQLite, on PostgreSQL and in memory: one contract for all three."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
import pytest_twisted

from stomp_chat.persistence import AdbapiChatStore, migrate
from stomp_chat.persistence.readpositions import (
    MAX_USER_ID_LENGTH,
    AdbapiReadPositionStore,
    MemoryReadPositionStore,
)
from tests.silentdb import assert_times_out, routed_and_migrated

if TYPE_CHECKING:
    from tests.conftest_db import CuttableProxy, TestDatabase

pytest_plugins = ["tests.conftest_db"]


@pytest_twisted.async_yield_fixture(params=["sqlite", "postgresql", "memory"])
async def positions(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A position store whose database has rooms 1 and 2."""
    if request.param == "memory":
        yield MemoryReadPositionStore(lambda room: room in (1, 2))
        return
    database = request.getfixturevalue(f"{request.param}_database")
    pool = database.open_pool()
    await migrate(pool)
    rooms = AdbapiChatStore(pool)
    await rooms.create_room("one", 1)
    await rooms.create_room("two", 2)
    store = AdbapiReadPositionStore(pool)
    yield store


@pytest_twisted.ensureDeferred
async def test_a_position_is_stored_per_user_and_room(positions: Any) -> None:
    """Each user has their own position in each room."""
    assert await positions.advance("alice", 1, 5) == 5
    assert await positions.advance("alice", 2, 9) == 9
    assert await positions.advance("bob", 1, 1) == 1
    assert await positions.positions("alice") == {1: 5, 2: 9}
    assert await positions.positions("bob") == {1: 1}
    assert await positions.positions("nobody") == {}


@pytest_twisted.ensureDeferred
async def test_a_position_never_moves_back(positions: Any) -> None:
    """Reporting an older seq keeps the newer position (two tabs may report out of order)."""
    await positions.advance("alice", 1, 7)
    assert await positions.advance("alice", 1, 3) == 7
    assert await positions.advance("alice", 1, 8) == 8
    assert await positions.positions("alice") == {1: 8}


@pytest_twisted.ensureDeferred
async def test_an_unknown_room_stores_nothing(positions: Any) -> None:
    """A position in a room that does not exist is refused (None), not stored."""
    assert await positions.advance("alice", 404, 1) is None
    assert await positions.positions("alice") == {}


@pytest_twisted.ensureDeferred
async def test_unicode_user_ids_round_trip(positions: Any) -> None:
    """User ids are text: Korean names and token subjects are kept as given."""
    await positions.advance("김민수", 1, 2)
    assert await positions.positions("김민수") == {1: 2}


def test_bad_user_ids_and_seqs_are_refused(positions: Any) -> None:
    """Empty or over-long user ids and negative or 64-bit-overflowing seqs raise ValueError."""
    for user, seq in (("", 1), ("x" * (MAX_USER_ID_LENGTH + 1), 1), ("a", -1), ("a", 2**63)):
        with pytest.raises(ValueError):
            positions.advance(user, 1, seq)


@pytest_twisted.ensureDeferred
async def test_positions_go_with_their_room(sqlite_database: Any) -> None:
    """Deleting a room deletes the read positions in it."""
    pool = sqlite_database.open_pool()
    await migrate(pool)
    await AdbapiChatStore(pool).create_room("one", 1)
    store = AdbapiReadPositionStore(pool)
    await store.advance("alice", 1, 3)
    await pool.runOperation("DELETE FROM rooms WHERE id = 1")
    assert await store.positions("alice") == {}


@pytest_twisted.ensureDeferred
async def test_positions_fail_within_the_timeout_when_postgres_is_silent(
    postgresql_database: TestDatabase, postgres_proxy: CuttableProxy
) -> None:
    """With PostgreSQL answering nothing (packets dropped), loading and advancing positions
    fail with DatabaseTimeout at the store's timeout instead of waiting forever."""
    from twisted.internet import reactor

    pool = await routed_and_migrated(postgresql_database, postgres_proxy)
    await AdbapiChatStore(pool).create_room("one", 1)
    store = AdbapiReadPositionStore(pool, timeout=0.5, clock=reactor)
    assert await store.advance("alice", 1, 3) == 3
    postgres_proxy.blackhole()
    await assert_times_out(lambda: store.positions("alice"), 0.5)
    await assert_times_out(lambda: store.advance("alice", 1, 4), 0.5)
