"""The store's shared plumbing (persistence/transactions.py): generated ids that skip rows
inserted behind the sequence, and the deadline on every call, against real databases and a
pool that never answers."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock

from stomp_chat.persistence import AdbapiChatStore, DatabaseTimeout, MemberNameTaken, migrate
from stomp_chat.persistence.transactions import Runner
from tests.chatmessages import chat_message
from tests.silentdb import SilentPool

if TYPE_CHECKING:
    from tests.conftest_db import CuttableProxy, TestDatabase

pytest_plugins = ["tests.conftest_db"]


@pytest_twisted.ensureDeferred
async def test_generated_ids_skip_rows_inserted_behind_the_sequence(
    database: TestDatabase,
) -> None:
    """Rows inserted with explicit ids by someone else (another tool, a restore) do not make
    generated ids collide: the store skips ids already taken."""
    store = AdbapiChatStore(database.open_pool())
    await migrate(store.pool)
    for room_id in (1, 2, 3):
        await store.pool.runOperation(
            "INSERT INTO rooms (id, name, created_at) "
            f"VALUES ({room_id}, 'restored', '2024-01-01T00:00:00Z')"
        )
    await store.pool.runOperation(
        "INSERT INTO members (id, name, created_at) VALUES (1, 'restored', '2024-01-01T00:00:00Z')"
    )
    room = await store.create_room("new")
    member = await store.create_member("new")
    assert room.id == 4
    assert member.id == 2
    with pytest.raises(MemberNameTaken):
        await store.create_member("restored")


@pytest_twisted.ensureDeferred
async def test_a_silent_postgres_times_out_and_frees_the_only_connection(
    postgresql_database: TestDatabase, postgres_proxy: CuttableProxy
) -> None:
    """With PostgreSQL answering nothing (packets dropped), a call fails with
    DatabaseTimeout after the timeout, and once it answers again the next call succeeds
    at once on a fresh connection, though the pool has a single one."""
    from twisted.internet import reactor

    routed = replace(postgres_proxy.route(postgresql_database.config), pool_max=1)
    pool = postgresql_database.open_pool(routed)
    await migrate(pool)
    store = AdbapiChatStore(pool, timeout=0.5, clock=reactor)
    await store.save_messages([chat_message(1, 1)])
    postgres_proxy.blackhole()
    started = reactor.seconds()
    with pytest.raises(DatabaseTimeout):
        await store.save_messages([chat_message(1, 2)])
    assert 0.4 < reactor.seconds() - started < 2
    assert postgres_proxy.blackholed_bytes > 0, "the call reached the silent server"
    with pytest.raises(DatabaseTimeout):
        await store.last_seq(1)
    postgres_proxy.restore()
    started = reactor.seconds()
    await store.save_messages([chat_message(1, 2)])
    assert await store.last_seq(1) == 2
    assert reactor.seconds() - started < 2


def test_a_call_to_a_silent_database_fails_with_database_timeout_at_its_deadline() -> None:
    """A Runner with a deadline turns a call the database never answers into DatabaseTimeout
    once the deadline passes on the injected clock, not before."""
    clock = Clock()
    run = Runner(SilentPool(), timeout=2.5, clock=clock)  # type: ignore[arg-type]
    outcome: list[Any] = []
    run(lambda transaction: None).addBoth(outcome.append)
    clock.advance(2.4)
    assert outcome == []
    clock.advance(0.1)
    [failure] = outcome
    assert failure.check(DatabaseTimeout)
    assert failure.getErrorMessage() == "the database did not answer within 2.5s"


@pytest.mark.parametrize(("timeout", "clock"), [(0.0, Clock()), (-1.0, Clock()), (1.0, None)])
def test_a_runner_refuses_a_deadline_it_cannot_keep(timeout: float, clock: Clock | None) -> None:
    """A timeout must be positive and come with a clock to measure it."""
    with pytest.raises(ValueError, match="positive and needs a clock"):
        Runner(SilentPool(), timeout, clock)  # type: ignore[arg-type]
