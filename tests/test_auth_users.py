"""Unit tests for stomp_chat.auth.users: the users table on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import pytest_twisted

from stomp_chat.auth.passwords import check_password, hash_password
from stomp_chat.auth.users import (
    UnknownUser,
    UserExists,
    UserStore,
    add_user,
    check_roles,
    check_user_name,
    list_users,
    remove_user,
    set_password,
)
from stomp_chat.persistence import migrate
from stomp_chat.persistence._dialect import dialect_named
from tests.silentdb import assert_times_out, routed_and_migrated

if TYPE_CHECKING:
    from tests.conftest_db import CuttableProxy, TestDatabase

pytest_plugins = ["tests.conftest_db"]


@pytest_twisted.ensureDeferred
async def test_users_round_trip_through_the_pool(database: TestDatabase) -> None:
    """Users added, re-passworded and removed through a pool are found as stored."""
    pool = database.open_pool()
    await migrate(pool)
    dialect = dialect_named(database.dialect)
    first_hash = hash_password("first password")
    alice = await pool.runInteraction(add_user, dialect, "alice", first_hash,
                                      frozenset({"admin"}))
    await pool.runInteraction(add_user, dialect, "bob", hash_password("bob password"))
    assert alice.roles == {"admin"} and alice.id > 0
    found = await UserStore(pool).find("alice")
    assert found == alice
    assert found is not None and check_password(found.password_hash, "first password")
    assert [u.name for u in await pool.runInteraction(list_users, dialect)] == ["alice", "bob"]
    with pytest.raises(UserExists):
        await pool.runInteraction(add_user, dialect, "alice", first_hash)
    await pool.runInteraction(set_password, dialect, "alice", hash_password("second password"))
    changed = await UserStore(pool).find("alice")
    assert changed is not None and check_password(changed.password_hash, "second password")
    await pool.runInteraction(remove_user, dialect, "bob")
    assert await UserStore(pool).find("bob") is None
    with pytest.raises(UnknownUser):
        await pool.runInteraction(remove_user, dialect, "bob")
    with pytest.raises(UnknownUser):
        await pool.runInteraction(set_password, dialect, "bob", first_hash)


@pytest_twisted.ensureDeferred
async def test_stored_hashes_are_never_plain(database: TestDatabase) -> None:
    """What reaches the database is an Argon2id hash, never the password."""
    pool = database.open_pool()
    await migrate(pool)
    await pool.runInteraction(add_user, dialect_named(database.dialect), "carol",
                              hash_password("carol's secret"))
    [(stored,)] = database.query("SELECT password_hash FROM users")
    assert stored.startswith("$argon2id$")
    assert "carol's secret" not in stored


def test_names_and_roles_are_checked():
    """User names are short and slash-free; roles lower-case words."""
    assert check_user_name("alice.smith@example") == "alice.smith@example"
    for bad in ("", "a/b", "has space", "-dash", "x" * 65):
        with pytest.raises(ValueError):
            check_user_name(bad)
    assert check_roles(["admin", "ops"]) == {"admin", "ops"}
    with pytest.raises(ValueError):
        check_roles(["Admin"])


@pytest_twisted.ensureDeferred
async def test_a_login_look_up_fails_within_the_timeout_when_postgres_is_silent(
    postgresql_database: TestDatabase, postgres_proxy: CuttableProxy
) -> None:
    """With PostgreSQL answering nothing (packets dropped), finding a user fails with
    DatabaseTimeout at the store's timeout, so a login never hangs on it."""
    from twisted.internet import reactor

    pool = await routed_and_migrated(postgresql_database, postgres_proxy)
    await pool.runInteraction(add_user, dialect_named("postgresql"), "alice", "not-a-hash")
    users = UserStore(pool, timeout=0.5, clock=reactor)
    assert (await users.find("alice")) is not None
    postgres_proxy.blackhole()
    await assert_times_out(lambda: users.find("alice"), 0.5)
